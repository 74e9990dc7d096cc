"""Tokenize any corpus of .parquet / .jsonl / .jsonl.zst / .jsonl.gz / .json.gz files into packed chunks.

Writes {destination}/{prefix}_{counter:010d}.bin (chunks of --chunk_size tokens, the last one shorter) and
{destination}/{prefix}.manifest.json. Every document is kept once, in the natural order of the files and of the
rows in each; the chunks are the same whatever --num_workers, local or streamed. Rerun the same command after an
interruption to continue. Exits 1 with a one-line error on bad input, and also when a source file was damaged
(the rest is prepared; the summary says what was lost).

  # FineWeb-Edu's 10BT sample from the Hub (HF_ENDPOINT and HF_TOKEN are honoured), rows with int_score >= 3:
  python scripts/prepare_data.py --hf_repo HuggingFaceFW/fineweb-edu --include 'sample/10BT/*.parquet' \
      --filter 'int_score >= 3' --tokenizer_dir data/tokenizer --destination data/fineweb_edu --prefix train
  # the same by the dataset card's config name:
  python scripts/prepare_data.py --hf_repo HuggingFaceFW/fineweb-edu --hf_config sample-10BT ...
  # The Stack (text in `content`), Python files only, from a local copy:
  python scripts/prepare_data.py --source_path /data/the-stack-dedup --include 'data/python/*.parquet' \
      --text_field content --destination data/stack --prefix train
  # DCLM-style .jsonl.zst under a static http(s) server, leaving one folder out:
  python scripts/prepare_data.py --base_url http://mirror/dclm --include 'global-shard_01*/**' \
      --exclude 'global-shard_01_of_10/local-shard_9*' --destination data/dclm --prefix train

Globs: `*` and `?` stay within one folder, `**` spans folders, a pattern naming a folder selects all below it.
Filters (`--filter`, repeatable, all must hold): `field op value`, op one of == != >= <= > <, field dotted for
nested objects (meta.source); a number compares with numbers, a 'quoted' or plain word with strings (== and !=).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_gpt.data import cli
from lit_gpt.data.formats import DataError, RowReader, parse_filters
from lit_gpt.data.sources import HttpSource, HuggingFaceSource, LocalSource


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--source_path", type=Path, help="a local folder holding the corpus files")
    where.add_argument("--base_url", help="an http(s) URL of the corpus's root (files found from directory indexes "
                                          "or --file_list)")
    where.add_argument("--hf_repo", help="a Hugging Face dataset repo, e.g. HuggingFaceFW/fineweb-edu")
    p.add_argument("--file_list", help="with --base_url: URL or path of a file listing relative paths, one a line")
    p.add_argument("--revision", default="main", help="with --hf_repo: branch, tag or commit")
    p.add_argument("--hf_config", help="with --hf_repo: a config (subset) named in the repo's dataset card, whose "
                                       "data files are then included")
    p.add_argument("--hf_split", default="train", help="with --hf_config: the split whose files to take")
    p.add_argument("--include", nargs="+", help="globs of the files to take (default: all, or --hf_config's)")
    p.add_argument("--exclude", nargs="+", default=[], help="globs of files to leave out")
    p.add_argument("--text_field", default="text", help="the column/key holding the text (The Stack: content)")
    p.add_argument("--filter", action="append", default=[], dest="filters", metavar="'FIELD OP VALUE'",
                   help="keep only rows for which this holds, e.g. 'int_score >= 3' or 'language == en'")
    p.add_argument("--set_field", help="a field naming each row's subset, counted apart in the summary")
    p.add_argument("--skip_sets", nargs="*", default=[], help="with --set_field: subsets to leave out")
    p.add_argument("--prefix", default="train", help="output file names: {prefix}_*.bin, {prefix}.manifest.json")
    cli.add_run_args(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        reader = RowReader(args.text_field, parse_filters(args.filters), args.set_field, tuple(args.skip_sets))
    except DataError as e:
        sys.exit(f"error: {e}")
    include = args.include or ([] if args.hf_config else ["**"])
    if args.source_path:
        source = LocalSource(args.source_path)
    elif args.base_url:
        source = HttpSource(args.base_url, file_list=args.file_list, **cli.retry_options(args))
    else:
        source = HuggingFaceSource(args.hf_repo, args.revision, config=args.hf_config, config_split=args.hf_split,
                                   **cli.retry_options(args))
    cli.run(source, args, include, args.exclude, reader, args.prefix)


if __name__ == "__main__":
    main()
