"""Tokenize SlimPajama (or any JSONL / .jsonl.zst corpus in its layout) into packed chunks, while it downloads.

Writes {destination}/{split}_slimpajama_{counter:010d}.bin (chunks of --chunk_size tokens, the last one shorter)
and {destination}/{split}_slimpajama.manifest.json. Rerun the same command after an interruption to continue.
Exits 1 with a one-line error on bad input, and also when a source file was damaged (corrupt or truncated .zst, after
one more download when streaming): the other files are prepared, and the summary says what was lost.

  # a local copy:        .../SlimPajama-627B/{train,validation,test}/chunk*/example_*.jsonl.zst
  python scripts/prepare_slimpajama.py --source_path /data/SlimPajama-627B --split train --destination data/slim
  # streamed from the Hub (HF_ENDPOINT and HF_TOKEN are honoured), here a 100M-token sample:
  python scripts/prepare_slimpajama.py --stream --split train --max_tokens 100000000 --destination data/slim
  # streamed from any static http(s) server holding the same tree (files found from its directory indexes,
  # or from --file_list, a text file of relative paths such as `find . -name '*.jsonl*'` writes):
  python scripts/prepare_slimpajama.py --stream --base_url http://mirror/SlimPajama-627B --destination data/slim
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_gpt.data import cli
from lit_gpt.data.sources import HttpSource, HuggingFaceSource, LocalSource


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source_path", type=Path, help="root of a local SlimPajama tree (holding train/, validation/, test/)")
    p.add_argument("--stream", action="store_true", help="download while tokenizing instead of reading --source_path")
    p.add_argument("--hf_repo", default="cerebras/SlimPajama-627B", help="with --stream: Hugging Face dataset repo")
    p.add_argument("--revision", default="main", help="with --stream: revision of --hf_repo")
    p.add_argument("--base_url", help="with --stream: an http(s) URL of the tree's root, instead of --hf_repo")
    p.add_argument("--file_list", help="with --base_url: URL or path of a file listing relative paths, one a line "
                                       "(default: crawl the server's HTML directory indexes)")
    p.add_argument("--split", default="train", choices=["train", "validation", "test"], help="which split")
    p.add_argument("--skip_sets", nargs="*", default=["RedPajamaGithub"],
                   help="meta.redpajama_set_name values to leave out (give none to keep all)")
    cli.add_run_args(p)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.stream == (args.source_path is not None):
        sys.exit("error: give either --source_path or --stream")

    if not args.stream:
        source = LocalSource(args.source_path)
    elif args.base_url:
        source = HttpSource(args.base_url, file_list=args.file_list, **cli.retry_options(args))
    else:
        source = HuggingFaceSource(args.hf_repo, args.revision, **cli.retry_options(args))

    cli.run(source, [args.split], [], cli.slimpajama_reader(args.skip_sets), args, prefix=f"{args.split}_slimpajama")


if __name__ == "__main__":
    main()
