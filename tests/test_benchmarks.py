"""The benchmarks' --tiny modes run the same code paths as on a GPU (one process per variant, the step
breakdown, the per-kernel table) on the CPU, with the kernels interpreted; the tables must hold measured rows."""

import json
import math
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(script, *args, timeout=240):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def measured(table_text, name):
    """tokens/s of the row named `name` (fails if the row is missing or not a number)."""
    match = re.search(rf"^\| {re.escape(name)} \| 1 \| ([\d,]+) \|", table_text, re.M)
    assert match, f"no measured row for {name!r} in:\n{table_text}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.slow
def test_train_throughput_tiny(tmp_path):
    out = run("train_throughput.py", "--tiny", "--variants", "lit_gpt eager", "lit_gpt compile",
              "lit_gpt kernels+compile fsdp", "hf eager", "litgpt eager", "--json", str(tmp_path / "r.json"))
    assert "| variant | micro batch | tokens/s | MFU | peak GiB | step ms |" in out
    for name in ("lit_gpt eager", "lit_gpt compile", "lit_gpt kernels+compile fsdp", "hf eager"):
        assert measured(out, name) > 0
    results = {r["variant"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    # same seed, same data, float32 on the CPU: FSDP2 over one process and the kernels compute the eager loss
    assert math.isclose(results["lit_gpt kernels+compile fsdp"]["loss"], results["lit_gpt eager"]["loss"],
                        rel_tol=1e-5)
    assert "litgpt eager (litgpt not installed)" in out or measured(out, "litgpt eager") > 0
    assert "### Step breakdown" in out
    for part in ("GEMMs", "attention fwd+bwd", "norms + RoPE + SwiGLU", "lm_head + cross-entropy", "clip_grad_norm_ + AdamW"):
        assert re.search(rf"^\| {re.escape(part)}[^|]*\| \d+\.\d\d \| \d+\.\d\d \|", out, re.M), part
    assert (tmp_path / "r.json").read_text().count('"status": "ok"') >= 4


def test_train_throughput_rejects_unknown_model():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--model", "nope"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: unknown config name 'nope'")
    assert "Traceback" not in proc.stderr


def test_kernel_microbenchmarks_tiny():
    out = run("kernels.py", "--tiny", "--no-compile")
    for kernel in ("rms_norm", "add_rms_norm", "rope", "swiglu", "linear_cross_entropy"):
        for impl in ("eager", "triton"):
            assert re.search(rf"^\| {kernel} \| {impl} \| \d+\.\d+ \|", out, re.M), (kernel, impl)


def test_train_throughput_budget_skips_rows_and_still_prints_table(tmp_path):
    out = run("train_throughput.py", "--tiny", "--budget", "0", "--variants", "lit_gpt eager", "hf eager",
              "--json", str(tmp_path / "r.json"))
    assert "| lit_gpt eager | 1 | skipped (--budget 0s used) |" in out
    assert "step breakdown skipped: --budget 0s used" in out
    assert '"skipped (--budget 0s used)"' in (tmp_path / "r.json").read_text()
