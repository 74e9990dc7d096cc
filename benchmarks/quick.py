"""The first device call: the throughput question answered inside 6 minutes on one H100/H200, in order of value.

  1. environment: GPU, driver, torch, CUDA, cuDNN, Triton versions
  2. correctness (< 90 s): every Triton kernel fwd+bwd vs float64 at MicroLlama shapes in bf16; 10 trainer steps
     of the debug model, kernels+compile vs eager
  3. headline: MicroLlama-300M, T=2048, micro batch 16: our two best variants and the best peer, same harness
  4. if time is left: the same at micro batch 12 with the allocator capped at 24 GiB (the 4x RTX 4090 recipe)

quick.json and quick.md in --out are rewritten after every row, so a run cut off still returns what it measured.
Each part's time (compilation included) is printed and kept, to re-plan the next run from. The plan, with the
expected time of each part and why, is in benchmarks/README.md.

  python benchmarks/quick.py --out out/gpu           # what `bash benchmarks/run_gpu.sh quick` runs
  python benchmarks/quick.py --tiny --out /tmp/q     # the same code on the CPU with the tiny model (a rehearsal)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import train_throughput as tt  # noqa: E402

HEADLINE = ["lit_gpt kernels+compile", "lit_gpt kernels+compile fsdp", "litgpt compile"]
CAPPED = ["lit_gpt kernels+compile fsdp", "lit_gpt kernels+compile", "litgpt compile"]  # the recipe is FSDP: first
# part -> seconds it is expected to take on an H100 (benchmarks/README.md says why); the timeouts are looser
PLAN = {"environment": 10, "correctness": 75, "headline": 180, "capped": 90}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--out", type=Path, required=True, help="folder for quick.json and quick.md")
    p.add_argument("--budget", type=float, default=330,
                   help="seconds for everything: a row not started by then is reported as skipped, one still "
                        "running is stopped (default 330: the 6 minutes less the environment and wheel install)")
    p.add_argument("--tiny", action="store_true", help="the 'tiny' config on the CPU, kernels interpreted")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (the rehearsal uses aot_eager: dynamo and autograd, no codegen)")
    return p.parse_args(argv)


class Report:
    """Rows of every part, rewritten to quick.json and quick.md (atomically) each time one is added."""

    def __init__(self, out: Path):
        self.out, self.env, self.rows, self.times = out, {}, [], {}

    def add(self, part: str, row: dict) -> None:
        if part == "environment":
            self.env = row
        self.rows.append({"part": part, **row})
        self.write()

    def write(self) -> None:
        from lit_gpt.utils import atomic_write

        with atomic_write(self.out / "quick.json") as f:
            f.write(json.dumps({"environment": self.env, "rows": self.rows, "part_seconds": self.times,
                                "plan_seconds": PLAN}, indent=2) + "\n")
        with atomic_write(self.out / "quick.md") as f:
            f.write(self.markdown())

    def markdown(self) -> str:
        e = self.env
        lines = [f"# quick: {e.get('device', '?')}, {e.get('date', '?')}", "",
                 f"driver {e.get('driver')}, torch {e.get('torch')}, CUDA {e.get('cuda')}, cuDNN {e.get('cudnn')}, "
                 f"Triton {e.get('triton')}, Python {e.get('python')}", "", "## Correctness", "",
                 "| check | status | fwd / loss error | bwd error | s |", "|---|---|---|---|---|"]
        for r in self.part_rows("correctness"):
            errors = [r.get("fwd_err", r.get("max_rel_diff")), r.get("bwd_err")]
            fwd, bwd = ("" if x is None else f"{x:.2e}" for x in errors)
            lines.append(f"| {r['check']} | {r['status']} | {fwd} | {bwd} | {r.get('seconds', '')} |")
        for part, title in (("headline", "headline"), ("capped", "allocator capped at 24 GiB (4x RTX 4090 recipe)")):
            rows = self.part_rows(part)
            if rows:
                T = next((r["seq_len"] for r in rows if r.get("seq_len")), "?")
                shape = f"{rows[0]['model']}, T={T}, micro batch {rows[0]['micro_batch']}"
                lines += ["", f"## {title}: {shape}", "", tt.table(rows)]
        lines += ["", "## Time per part (s, compilation included)", "", "| part | planned | took |", "|---|---|---|"]
        lines += [f"| {p} | {PLAN[p]} | {self.times.get(p, '')} |" for p in PLAN]
        return "\n".join(lines) + "\n"

    def part_rows(self, part: str) -> list[dict]:
        return [r for r in self.rows if r["part"] == part]


def stream_rows(cmd: list[str], env: dict, timeout: float, on_row) -> bool:
    """Runs cmd, handing each RESULT row to on_row as it is printed (its other output goes to stderr); kills it
    after `timeout` seconds. True if it finished in time with exit status 0."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT) as proc:
        timer = threading.Timer(max(timeout, 0), proc.kill)
        timer.start()
        try:
            for line in proc.stdout:
                if line.startswith(tt.RESULT_TAG):
                    on_row(json.loads(line[len(tt.RESULT_TAG):]))
                else:
                    sys.stderr.write(line)
            return proc.wait() == 0 and timer.is_alive()
        finally:
            timer.cancel()


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = Report(args.out)
    failed = []

    def left() -> float:
        return args.budget - (time.monotonic() - started)

    def timed(part: str, fn) -> None:
        print(f"== {part} (planned {PLAN[part]}s, {left():.0f}s left)", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        fn()
        report.times[part] = round(time.monotonic() - t0, 1)
        report.write()
        print(f"== {part} took {report.times[part]:.0f}s", file=sys.stderr, flush=True)

    tt_argv = ["--model", "MicroLlama-300M", "--compile-backend", args.compile_backend] + (["--tiny"] if args.tiny
                                                                                            else [])
    env = tt.child_env(tt.parse_args(tt_argv))
    check = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")] + (["--tiny"] if args.tiny else [])

    def child(part: str, extra: list[str], timeout: float) -> None:
        def on_row(row):
            report.add(part, row)
            if not row["status"].startswith("ok"):
                failed.append(row["check"])
        if not stream_rows(check + extra, env, min(timeout, left()), on_row):
            report.add(part, {"check": " ".join(extra), "status": "FAIL: crashed or timed out"})
            failed.append(" ".join(extra))

    def correctness() -> None:
        child("correctness", ["kernels"], 60)
        steps = ["--steps", "3"] if args.tiny else []  # interpreted kernels: 10 steps would take a minute
        child("correctness", ["trainer", "--compile-backend", args.compile_backend, *steps], 90)

    def throughput(part: str, variants: list[str], micro_batch: int, cap=None) -> None:
        targs = tt.parse_args(tt_argv + (["--memory-cap", str(cap)] if cap else []))
        for variant in variants:
            if not tt.available(variant):
                report.add(part, tt.result_row(targs.model, variant, micro_batch, status=f"not run "
                                               f"({tt.required_module(variant)} not installed)", memory_cap_gib=cap))
            elif left() <= 0:
                report.add(part, tt.result_row(targs.model, variant, micro_batch, status=f"skipped (--budget "
                                               f"{args.budget:g}s used)", memory_cap_gib=cap))
            else:
                print(f"running {variant}, micro batch {micro_batch} ...", file=sys.stderr, flush=True)
                row = tt.run_row(targs, variant, micro_batch, min(180, left()))
                print(f"  {tt.fmt(row)}", file=sys.stderr, flush=True)
                report.add(part, row)
                failed.extend(tt.our_failures([row]))

    timed("environment", lambda: child("environment", ["env"], 60))
    timed("correctness", correctness)
    tiny = args.tiny  # the tiny rehearsal runs micro batch 1 (interpreted kernels are slow)
    timed("headline", lambda: throughput("headline", HEADLINE, 1 if tiny else 16))
    timed("capped", lambda: throughput("capped", CAPPED, 1 if tiny else 12, cap=24))
    print(report.markdown(), flush=True)
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
