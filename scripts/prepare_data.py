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

from lit_gpt.data import cli


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_corpus_args(p)
    p.add_argument("--prefix", default="train", help="output file names: {prefix}_*.bin, {prefix}.manifest.json")
    cli.add_run_args(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    cli.run(*cli.corpus(args), args, args.prefix)


if __name__ == "__main__":
    main()
