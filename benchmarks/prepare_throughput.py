"""Tokens/s of the data pipeline (scripts/prepare_data.py, prepare_slimpajama.py) against the tokenizer alone, per
input format, on the bundled sample.

The pipeline is timed end to end (listing, pool start, reading, decompressing, JSON parsing or parquet decoding,
tokenizing, writing chunks and manifests) over `--repeat` copies of the sample's train split, written in each of
`--formats` (the same documents in the same order; parquet in row groups of 1000 rows); the tokenizer alone encodes
the same documents' texts, already in memory, on one core. Besides wall-clock rates, the CPU seconds spent per token are
reported (tokenizer processes and main process apart): on a shared machine, where other jobs take cores away,
they still say how much work the pipeline adds on top of the tokenizer.

    python benchmarks/prepare_throughput.py                 # 1 and all-cores workers
    python benchmarks/prepare_throughput.py --workers 1 2 4
    python benchmarks/prepare_throughput.py --formats jsonl.zst parquet jsonl.gz --tokenizer_dir path/to/32k
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.data.cli import slimpajama_reader  # noqa: E402
from lit_gpt.data.formats import SUFFIXES, decompress, write_rows  # noqa: E402
from lit_gpt.data.prepare import encode_with_eos, prepare  # noqa: E402
from lit_gpt.data.sources import LocalSource  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402


SLIMPAJAMA = slimpajama_reader()


def sample_tree(sample: Path, repeat: int, out: Path, fmt: str) -> list[str]:
    """`repeat` copies of the sample's train files (as chunk1..chunkN) in format `fmt`; returns the kept texts once."""
    texts = []
    for i, path in enumerate(sorted((sample / "train").rglob("*.jsonl.zst"))):
        rows = [json.loads(line) for line in decompress(path.name, path.read_bytes())[0].splitlines()]
        rows = [{"text": r["text"], "meta": {"redpajama_set_name": r["meta"]["redpajama_set_name"]}} for r in rows]
        for copy in range(repeat):
            write_rows(out / "train" / f"chunk{copy + 1}" / f"example_train_{i}.{fmt}", rows)
        texts += [r["text"] for r in rows if r["meta"]["redpajama_set_name"] not in SLIMPAJAMA.skip_sets]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=ROOT / "data" / "sample_slimpajama", help="SlimPajama-layout tree")
    parser.add_argument("--tokenizer_dir", type=Path, default=ROOT / "data" / "tokenizer", help="tokenizer folder")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the sample's train split to process")
    parser.add_argument("--workers", type=int, nargs="*", default=sorted({1, os.cpu_count() or 1}), help="worker counts")
    parser.add_argument("--trials", type=int, default=3, help="best of this many runs per row")
    parser.add_argument("--formats", nargs="+", default=["jsonl.zst", "parquet"], help="input formats to time",
                        choices=[s.lstrip(".") for s in SUFFIXES])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {fmt: tmp / fmt for fmt in args.formats}
        texts = [sample_tree(args.sample, args.repeat, folder, fmt) for fmt, folder in trees.items()][0]
        tokenizer = Tokenizer(args.tokenizer_dir)
        load_before = os.getloadavg()
        rows = []
        best = 0.0
        for _ in range(args.trials):
            t0, c0 = time.perf_counter(), time.process_time()
            n_tokens = sum(map(len, encode_with_eos(tokenizer, texts)))
            rate = n_tokens / (time.perf_counter() - t0)
            if rate > best:
                best, cpu = rate, time.process_time() - c0
        alone, alone_cpu_per_token = best, cpu / n_tokens
        rows.append(("tokenizer alone (1 core)", 1, n_tokens, n_tokens / alone, alone, cpu, 0.0))
        for (fmt, folder), n in itertools.product(trees.items(), args.workers):
            best, tokens = 0.0, 0
            for trial in range(args.trials):
                dest = tmp / f"out-{fmt}-{n}-{trial}"
                t0, main0, kids0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
                stats = prepare(LocalSource(folder), "train", args.tokenizer_dir, dest, prefix="train", reader=SLIMPAJAMA,
                                num_workers=n, log=lambda *a: None, progress_every=1e9)
                elapsed = time.perf_counter() - t0
                tokens = sum(stats.tokens.values())
                if tokens / elapsed > best:
                    best = tokens / elapsed
                    main_cpu = cpu_seconds(resource.RUSAGE_SELF) - main0
                    workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - kids0
            rows.append((f"pipeline, {fmt}, {n} worker{'s' if n > 1 else ''}", n, tokens, tokens / best, best, workers_cpu, main_cpu))
        load_after = os.getloadavg()

    print(f"cpu cores: {os.cpu_count()}, load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(other processes share these cores)")
    print(f"| run | tokens | seconds (best of {args.trials}) | tokens/s | vs tokenizer alone | per worker | "
          "tokenizer-process CPU s | main-process CPU s | tokenizer CPU / pipeline CPU per token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, tokens, seconds, rate, workers_cpu, main_cpu in rows:
        efficiency = alone_cpu_per_token / ((workers_cpu + main_cpu) / tokens)
        print(f"| {name} | {tokens:,} | {seconds:.2f} | {rate:,.0f} | {rate / alone:.2f}x | {rate / alone / n:.2f} | "
              f"{workers_cpu:.2f} | {main_cpu:.2f} | {efficiency:.2f} |")


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
