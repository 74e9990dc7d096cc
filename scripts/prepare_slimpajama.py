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
import os
import sys
from pathlib import Path

from lit_gpt.data.prepare import prepare
from lit_gpt.data.sources import DataError, HttpSource, HuggingFaceSource, LocalSource


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
    p.add_argument("--tokenizer_dir", type=Path, default=Path("data/tokenizer"),
                   help="folder with tokenizer.model or tokenizer.json (e.g. a Llama-2 checkpoint folder)")
    p.add_argument("--destination", type=Path, required=True, help="output folder for the chunks and the manifest")
    p.add_argument("--chunk_size", type=int, default=2049 * 1024, help="tokens per chunk file")
    p.add_argument("--skip_sets", nargs="*", default=["RedPajamaGithub"],
                   help="meta.redpajama_set_name values to leave out (give none to keep all)")
    p.add_argument("--max_files", type=int, help="only the first N files of the split (in natural order)")
    p.add_argument("--max_tokens", type=int, help="stop after the document that reaches N tokens")
    p.add_argument("--num_workers", type=int, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    p.add_argument("--download_workers", type=int, default=4, help="files downloaded at once, ahead of tokenizing")
    p.add_argument("--retries", type=int, default=5, help="with --stream: retries of a failed download (backoff 1, 2, 4.. s)")
    p.add_argument("--retry_backoff", type=float, default=1.0, help="with --stream: first retry delay in seconds")
    p.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines when not a TTY")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.stream == (args.source_path is not None):
        sys.exit("error: give either --source_path or --stream")
    retry = {"retries": args.retries, "backoff": args.retry_backoff}
    if not args.stream:
        source = LocalSource(args.source_path)
    elif args.base_url:
        source = HttpSource(args.base_url, file_list=args.file_list, **retry)
    else:
        source = HuggingFaceSource(args.hf_repo, args.revision, **retry)
    try:
        stats = prepare(source, args.split, args.tokenizer_dir, args.destination, chunk_size=args.chunk_size,
                        skip_sets=args.skip_sets, max_files=args.max_files, max_tokens=args.max_tokens,
                        num_workers=args.num_workers, download_workers=args.download_workers,
                        progress_every=args.progress_every)
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue")
    if stats.damaged_files:  # the rest is done, but no script should carry on unaware of the loss
        names = list(stats.damaged_files)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        sys.exit(f"error: data lost from {len(names)} damaged source files: {', '.join(names[:3])}{more}")


if __name__ == "__main__":
    main()
