"""The command-line parts that scripts/prepare_data.py and its presets (scripts/prepare_slimpajama.py) share."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lit_gpt.data.formats import DataError, RowReader
from lit_gpt.data.prepare import prepare


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Tokenizer, output and speed options."""
    p.add_argument("--tokenizer_dir", type=Path, default=Path("data/tokenizer"),
                   help="folder with tokenizer.model or tokenizer.json (e.g. a Llama-2 checkpoint folder)")
    p.add_argument("--destination", type=Path, required=True, help="output folder for the chunks and the manifest")
    p.add_argument("--chunk_size", type=int, default=2049 * 1024, help="tokens per chunk file")
    p.add_argument("--max_files", type=int, help="only the first N files (in natural order)")
    p.add_argument("--max_tokens", type=int, help="stop after the document that reaches N tokens")
    p.add_argument("--num_workers", type=int, default=os.cpu_count(), help="tokenizer processes (default: all cores)")
    p.add_argument("--download_workers", type=int, default=4, help="files fetched at once, ahead of tokenizing")
    p.add_argument("--retries", type=int, default=5, help="streaming: retries of a failed download (backoff 1, 2, 4.. s)")
    p.add_argument("--retry_backoff", type=float, default=1.0, help="streaming: first retry delay in seconds")
    p.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines when not a TTY")


def retry_options(args: argparse.Namespace) -> dict:
    return {"retries": args.retries, "backoff": args.retry_backoff}


def run(source, args: argparse.Namespace, include, exclude, reader: RowReader, prefix: str) -> None:
    """Prepares the selected files; exits 1 with one line on bad input, and when data was lost from damaged files
    (after doing all the rest: no script should carry on unaware of the loss)."""
    try:
        stats = prepare(source, include, args.tokenizer_dir, args.destination, prefix=prefix, exclude=exclude,
                        reader=reader, chunk_size=args.chunk_size, max_files=args.max_files,
                        max_tokens=args.max_tokens, num_workers=args.num_workers,
                        download_workers=args.download_workers, progress_every=args.progress_every)
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue")
    if stats.damaged_files:
        names = list(stats.damaged_files)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        sys.exit(f"error: data lost from {len(names)} damaged source files: {', '.join(names[:3])}{more}")
