"""Tokens/s of the data pipeline (scripts/prepare_data.py, prepare_slimpajama.py) against the tokenizer alone, per
input format and tokenizer, on the bundled sample or another SlimPajama-layout tree.

The pipeline is timed end to end (listing, pool start, reading, decompressing, JSON parsing or parquet decoding,
tokenizing, writing chunks and manifests) over `--repeat` copies of the sample's train split, written in each of
`--formats` (the same documents in the same order; parquet in row groups of 1000 rows); the tokenizer alone encodes
the same documents' texts, already in memory, on one core. Besides wall-clock rates, the CPU seconds spent per token are
reported (tokenizer processes and main process apart): on a shared machine, where other jobs take cores away,
they still say how much work the pipeline adds on top of the tokenizer; and the share of the tokenizer processes'
CPU spent inside the tokenizer's own call (`encoding / tokenizer-process CPU`, recorded in the run itself).

    python benchmarks/prepare_throughput.py                 # 1 and all-cores workers
    python benchmarks/prepare_throughput.py --workers 1 2 4
    python benchmarks/prepare_throughput.py --formats jsonl.zst parquet jsonl.gz --tokenizer_dir data/tokenizer path/to/32k

Real prose and 32k-vocab tokenizers (byte-level BPE, Llama-2-style sentencepiece and its `tokenizers` twin) come
from `benchmarks/prose_corpus.py` (its docstring has the commands); `--sample` then names its corpus folder.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# the tokenizer alone runs on one core as each tokenizer process does: `tokenizers`' encode_batch would otherwise
# spread over all cores (and the pool's forks inherit a parallelism already used)
os.environ["TOKENIZERS_PARALLELISM"] = "false"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.data.cli import slimpajama_reader  # noqa: E402
from lit_gpt.data.formats import SUFFIXES, decompress, write_rows  # noqa: E402
import lit_gpt.data.prepare  # noqa: E402
from lit_gpt.data.prepare import encode_one_core, prepare  # noqa: E402
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
    parser.add_argument("--tokenizer_dir", type=Path, nargs="+", default=[ROOT / "data" / "tokenizer"],
                        help="tokenizer folders, each timed alone and in the pipeline")
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
        load_before = os.getloadavg()
        rows = []
        for tokenizer_dir in args.tokenizer_dir:
            rows += time_tokenizer(tokenizer_dir, texts, trees, args.workers, args.trials, tmp)
        load_after = os.getloadavg()

    print(f"cpu cores: {os.cpu_count()}, load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(other processes share these cores)")
    print(f"| tokenizer | run | tokens | seconds (best of {args.trials}) | tokens/s | vs tokenizer alone | per worker | "
          "encoding / tokenizer-process CPU | tokenizer-process CPU s | main-process CPU s | "
          "tokenizer CPU / pipeline CPU per token |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for tok, name, n, tokens, seconds, rate, workers_cpu, main_cpu, encode_cpu, alone, alone_cpu_per_token in rows:
        efficiency = alone_cpu_per_token / ((workers_cpu + main_cpu) / tokens)
        share = f"{encode_cpu / workers_cpu:.3f}" if encode_cpu and workers_cpu else "-"
        print(f"| {tok} | {name} | {tokens:,} | {seconds:.2f} | {rate:,.0f} | {rate / alone:.2f}x | {rate / alone / n:.2f} | "
              f"{share} | {workers_cpu:.2f} | {main_cpu:.2f} | {efficiency:.2f} |")


def time_tokenizer(tokenizer_dir: Path, texts: list[str], trees: dict, workers: list[int], trials: int, tmp: Path) -> list:
    """Rows of the tokenizer alone, then of the pipeline per format and number of workers. Each trial runs every row
    once (so a change in the machine's load spreads over all rows rather than spoiling some) and each row keeps its
    best trial. The tokenizer alone is loaded afresh per trial, as each pipeline run's processes load it: its first
    pass over the texts is the reference; the second (a `tokenizers` BPE has then cached its first 10,000 words'
    pieces) is shown too, and a first pass in a forked process (as the pipeline's tokenizer processes are) says
    whether a fork alone changes the rate. In the pipeline rows the CPU the tokenizer processes spent encoding is
    recorded too (Linux: the forked processes inherit `recorded_encode`): its share of their CPU is the pipeline's
    efficiency per worker by CPU accounting, which a shared machine's load does not move."""
    runs = [(None, "first pass", 1), (None, "second pass", 1), ("fork", "first pass in a forked process", 1)]
    runs += list(itertools.product(trees, workers))
    best: dict = {}  # run -> (tokens, seconds, tokenizer-process CPU s, main-process CPU s, encoding CPU s)
    for trial in range(trials):
        tokenizer = Tokenizer(tokenizer_dir)
        _alone.update(tokenizer=tokenizer, texts=texts)  # inherited by the fork below, before any encoding
        forked = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        forked.submit(os.getpid).result()
        for run in runs:
            fmt, n = run[0], run[-1]
            if fmt == "fork":
                measured = forked.submit(encode_alone).result()
                forked.shutdown()
            else:
                measured = time_run(tokenizer, fmt and trees[fmt], n, tmp / f"{tokenizer_dir.name}-{fmt}-{n}-{trial}")
            if run not in best or measured[0] / measured[1] > best[run][0] / best[run][1]:
                best[run] = measured
    tok = f"{tokenizer_dir.name} ({tokenizer.backend}, {tokenizer.vocab_size:,})"
    n_tokens, seconds, cpu, _, _ = best[runs[0]]
    alone = n_tokens / seconds
    rows = []
    for run in runs:
        tokens, seconds, workers_cpu, main_cpu, encode_cpu = best[run]
        rate = tokens / seconds
        name = f"tokenizer alone (1 core), {run[1]}" if run[0] in (None, "fork") else \
            f"pipeline, {run[0]}, {run[1]} worker{'s' if run[1] > 1 else ''}"
        rows.append((tok, name, run[-1], tokens, seconds, rate, workers_cpu, main_cpu, encode_cpu, alone,
                     cpu / n_tokens))
    return rows


def time_run(tokenizer: Tokenizer, tree, n: int, scratch: Path) -> tuple[int, float, float, float, float]:
    """(tokens, seconds, tokenizer-process CPU s, main-process CPU s, encoding CPU s) of the tokenizer alone in this
    process (`tree` None) or of the pipeline over `tree` with `n` tokenizer processes."""
    t0, main0, kids0 = time.perf_counter(), cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    if tree is None:
        tokens = count_tokens(tokenizer, _alone["texts"])
        seconds, cpu = time.perf_counter() - t0, cpu_seconds(resource.RUSAGE_SELF) - main0
        return tokens, seconds, cpu, 0.0, 0.0
    ENCODE_RECORDS[0] = scratch / "encode"
    ENCODE_RECORDS[0].mkdir(parents=True)
    lit_gpt.data.prepare.encode_one_core = recorded_encode  # what `tokenize_batch` calls, in the forked processes
    try:
        stats = prepare(LocalSource(tree), "train", tokenizer.folder, scratch / "out", prefix="train",
                        reader=SLIMPAJAMA, num_workers=n, log=lambda *a: None, progress_every=1e9)
    finally:
        lit_gpt.data.prepare.encode_one_core = encode_one_core
    seconds = time.perf_counter() - t0
    main_cpu, kids_cpu = cpu_seconds(resource.RUSAGE_SELF) - main0, cpu_seconds(resource.RUSAGE_CHILDREN) - kids0
    encode_cpu = sum(float(f.read_text()) for f in ENCODE_RECORDS[0].iterdir())
    shutil.rmtree(scratch)
    return sum(stats.tokens.values()), seconds, kids_cpu, main_cpu, encode_cpu


def count_tokens(tokenizer: Tokenizer, texts: list[str]) -> int:
    return sum(len(ids) + 1 for ids in encode_one_core(tokenizer, texts))  # + EOS, as written


_alone: dict = {}  # the tokenizer and texts a forked process encodes, set before it is forked
ENCODE_RECORDS: list = [None]  # the folder where tokenizer processes record their encoding CPU, one file each
_encode_cpu = [0.0]


def encode_alone() -> tuple[int, float, float, float, float]:
    """`time_run` of the tokenizer alone, in a forked process."""
    return time_run(_alone["tokenizer"], None, 1, Path())


def recorded_encode(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """`encode_one_core`, its CPU seconds added up per process in a file of `ENCODE_RECORDS[0]`."""
    cpu0 = time.process_time()
    ids = encode_one_core(tokenizer, texts)
    _encode_cpu[0] += time.process_time() - cpu0
    (ENCODE_RECORDS[0] / str(os.getpid())).write_text(repr(_encode_cpu[0]))
    return ids


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
