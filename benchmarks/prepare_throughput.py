"""Tokens/s of scripts/prepare_slimpajama.py's pipeline against the tokenizer alone, on the bundled sample.

The pipeline is timed end to end (listing, pool start, reading, decompressing, JSON parsing, tokenizing, writing
chunks and manifests) over `--repeat` copies of the sample's train split; the tokenizer alone encodes the same
documents' texts, already in memory, on one core. Besides wall-clock rates, the CPU seconds spent per token are
reported (tokenizer processes and main process apart): on a shared machine, where other jobs take cores away,
they still say how much work the pipeline adds on top of the tokenizer.

    python benchmarks/prepare_throughput.py                 # 1 and all-cores workers
    python benchmarks/prepare_throughput.py --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.data.prepare import encode_with_eos, prepare  # noqa: E402
from lit_gpt.data.sources import LocalSource  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402


def sample_tree(sample: Path, repeat: int, out: Path) -> list[str]:
    """`repeat` copies of the sample's train files (as chunk1..chunkN links); returns the kept texts once."""
    files = sorted((sample / "train").rglob("*.jsonl.zst"))
    for copy in range(repeat):
        for i, f in enumerate(files):
            target = out / "train" / f"chunk{copy + 1}" / f"example_train_{i}.jsonl.zst"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f.resolve())
    texts = []
    for f in files:
        for line in zstandard.ZstdDecompressor().decompress(f.read_bytes()).splitlines():
            row = json.loads(line)
            if row["meta"]["redpajama_set_name"] != "RedPajamaGithub":
                texts.append(row["text"])
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", type=Path, default=ROOT / "data" / "sample_slimpajama", help="SlimPajama-layout tree")
    parser.add_argument("--tokenizer_dir", type=Path, default=ROOT / "data" / "tokenizer", help="tokenizer folder")
    parser.add_argument("--repeat", type=int, default=4, help="copies of the sample's train split to process")
    parser.add_argument("--workers", type=int, nargs="*", default=sorted({1, os.cpu_count() or 1}), help="worker counts")
    parser.add_argument("--trials", type=int, default=3, help="best of this many runs per row")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = sample_tree(args.sample, args.repeat, tmp / "src")
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
        for n in args.workers:
            best, tokens = 0.0, 0
            for trial in range(args.trials):
                dest = tmp / f"out-{n}-{trial}"
                t0, main0, kids0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
                stats = prepare(LocalSource(tmp / "src"), "train", args.tokenizer_dir, dest, num_workers=n,
                                log=lambda *a: None, progress_every=1e9)
                elapsed = time.perf_counter() - t0
                tokens = sum(stats.tokens.values())
                if tokens / elapsed > best:
                    best = tokens / elapsed
                    main_cpu = cpu_seconds(resource.RUSAGE_SELF) - main0
                    workers_cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - kids0
            rows.append((f"pipeline, {n} worker{'s' if n > 1 else ''}", n, tokens, tokens / best, best, workers_cpu, main_cpu))
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
