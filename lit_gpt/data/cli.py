"""The command-line parts that scripts/prepare_data.py and its presets (scripts/prepare_slimpajama.py) share."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lit_gpt.data.formats import DataError, RowReader, parse_filters
from lit_gpt.data.prepare import prepare
from lit_gpt.data.sources import HttpSource, HuggingFaceSource, LocalSource


def add_corpus_args(p: argparse.ArgumentParser) -> None:
    """Where the corpus is, which of its files and rows to take, and where the text is."""
    where = p.add_mutually_exclusive_group()  # one is needed: corpus() says so in one line
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


def corpus(args: argparse.Namespace) -> tuple:
    """(source, include, exclude, reader) that add_corpus_args's options name; exits with one line on a bad filter."""
    if not (args.source_path or args.base_url or args.hf_repo):
        sys.exit("error: give one of --source_path, --base_url, --hf_repo")
    try:
        reader = RowReader(args.text_field, parse_filters(args.filters), args.set_field, tuple(args.skip_sets))
    except DataError as e:
        sys.exit(f"error: {e}")
    include = args.include or ([] if args.hf_config else ["**"])
    retry = retry_options(args)
    if args.source_path:
        source = LocalSource(args.source_path)
    elif args.base_url:
        source = HttpSource(args.base_url, file_list=args.file_list, **retry)
    else:
        source = HuggingFaceSource(args.hf_repo, args.revision, config=args.hf_config, config_split=args.hf_split,
                                   **retry)
    return source, include, args.exclude, reader


def slimpajama_reader(skip_sets=("RedPajamaGithub",)) -> RowReader:
    """SlimPajama's rows: text in `text`, counted per meta.redpajama_set_name (scripts/prepare_slimpajama.py)."""
    return RowReader(set_field="meta.redpajama_set_name", skip_sets=tuple(skip_sets))


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
    add_retry_args(p)
    p.add_argument("--progress_every", type=float, default=10.0, help="seconds between progress lines when not a TTY")
    p.add_argument("--commit_every", type=float, default=60.0,
                   help="seconds between commits inside a file (a rerun redoes at most this much work per file)")


def add_retry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retries", type=int, default=5, help="streaming: retries of a failed download (backoff 1, 2, 4.. s)")
    p.add_argument("--retry_backoff", type=float, default=1.0, help="streaming: first retry delay in seconds")


def retry_options(args: argparse.Namespace) -> dict:
    return {"retries": args.retries, "backoff": args.retry_backoff}


def run(source, include, exclude, reader: RowReader, args: argparse.Namespace, prefix: str) -> None:
    """Prepares the selected files; exits 1 with one line on bad input, and when data was lost from damaged files
    (after doing all the rest: no script should carry on unaware of the loss)."""
    try:
        stats = prepare(source, include, args.tokenizer_dir, args.destination, prefix=prefix, exclude=exclude,
                        reader=reader, chunk_size=args.chunk_size, max_files=args.max_files,
                        max_tokens=args.max_tokens, num_workers=args.num_workers,
                        download_workers=args.download_workers, progress_every=args.progress_every,
                        commit_every=args.commit_every)
    except (DataError, OSError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: rerun the same command to continue")
    if stats.damaged_files:
        names = list(stats.damaged_files)
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        sys.exit(f"error: data lost from {len(names)} damaged source files: {', '.join(names[:3])}{more}")
