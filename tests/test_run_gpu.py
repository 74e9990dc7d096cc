"""benchmarks/run_gpu.sh and its CPU rehearsal: `--dry-run` runs every stage's real commands with the tiny model
(kernels interpreted), writes the same files a device call returns, and checks that every module the stages import
is on the device image; plus the pieces a cut-off device run relies on (rows written as they come, a stopped child
keeps its rows, a failing check fails)."""

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from benchmarks import device_image, gpu_check, quick
from benchmarks.train_throughput import ROW_KEYS
from tests.conftest import ROOT, doc_deb

STAGES = ["quick", "peers", "tinyllama", "kernels", "sweep", "autotune", "micro", "accelerators", "checkpoint", "tests", "data"]


def run_gpu_sh(tmp_path, *args, timeout=900, **env):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, BUDGET="600",
               TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"), TRITON_CACHE_DIR=str(tmp_path / "triton"), **env)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "run_gpu.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def prose_deb(path):
    """A stand-in for python3.11-doc's .deb: 7 files of made-up words, enough for the rehearsal's 1,000-piece
    tokenizers."""
    rng = random.Random(0)
    syllables = "ka lo mi ne su ta ri po ve zu da fe gi ho ju ba ce di fo gu".split()

    def paragraph():
        words = ("".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(rng.randint(20, 60)))
        return " ".join(words) + "."

    docs = {f"library/m{i}.rst.txt": "\n\n".join(paragraph() for _ in range(40)) for i in range(6)}
    docs["c-api/x.rst.txt"] = "\n\n".join(paragraph() for _ in range(10))
    return doc_deb(path, docs)


@pytest.mark.slow
def test_dry_run_of_every_stage(tmp_path):
    """The `data` stage takes the real-prose path (a .deb as fetch_wheels.sh fetches, here a stand-in)."""
    proc = run_gpu_sh(tmp_path, "--dry-run", "all", PROSE_DEB=str(prose_deb(tmp_path / "doc.deb")))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    for stage in STAGES:
        assert f"== {stage} took" in proc.stderr, stage
    assert "imports of" in proc.stdout and "all in Python 3.12's standard library" in proc.stdout
    assert "results_dir" in (out / "environment.txt").read_text()

    result = json.loads((out / "quick.json").read_text())
    assert result["environment"]["torch"] == torch.__version__
    checks = {r["check"]: r for r in result["rows"] if r["part"] == "correctness"}
    kernels = ["rms_norm", "add_rms_norm", "rope", "swiglu", "linear_cross_entropy", "attention"]
    assert set(checks) == {f"kernel {k}" for k in kernels} | {"trainer eager", "trainer kernels+compile"}
    assert all(r["status"] == "ok" for r in checks.values()), checks
    assert set(result["part_seconds"]) == {"environment", "correctness", "headline", "capped"}
    rows = [r for r in result["rows"] if r["part"] in ("headline", "capped")]
    assert [r["variant"] for r in rows] == quick.HEADLINE + quick.CAPPED
    assert all(set(ROW_KEYS) <= set(r) for r in rows)
    ours = [r for r in rows if r["variant"].startswith("lit_gpt")]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in ours), ours
    assert all(r["memory_cap_gib"] == 24 for r in rows if r["part"] == "capped")
    md = (out / "quick.md").read_text()
    assert "| kernel rope | ok |" in md and "## Time per part" in md

    data = (out / "data.md").read_text()
    assert "| llama2-sp (sentencepiece, 1,000) | pipeline, parquet, 1 worker |" in data
    assert "| bpe1k (huggingface, 1,000) | pipeline, parquet, 1 worker |" in data
    costs = (out / "checkpoint.md").read_text()
    assert "| background |" in costs and "| at once |" in costs and "training time lost per save" in costs

    table_header = "| variant | micro batch | tokens/s | MFU | peak GiB | step ms | first step s | row s |"
    by_variant = {}
    for stage in ("peers", "tinyllama", "sweep", "autotune", "micro", "accelerators"):
        assert table_header in (out / f"{stage}.md").read_text(), stage
        for row in json.loads((out / f"{stage}.json").read_text())["rows"]:
            assert set(ROW_KEYS) <= set(row), row
            by_variant.setdefault(row["variant"], row)
    assert by_variant["hf eager"]["tokens_per_s"] > 0
    # same seed, same data, float32: FSDP2 over one process and the kernels give eager's loss
    fsdp = next(r for r in rows if r["variant"] == "lit_gpt kernels+compile fsdp")
    assert math.isclose(fsdp["loss"], by_variant["lit_gpt eager"]["loss"], rel_tol=1e-5)
    micro = (out / "micro.md").read_text()
    for part in ("GEMMs", "attention fwd+bwd", "norms + RoPE + SwiGLU", "lm_head + cross-entropy"):
        assert f"| {part}" in micro, part
    kernels_md = (out / "kernels.md").read_text()
    assert "| rms_norm | triton |" in kernels_md and "| attention | sdpa |" in kernels_md
    assert "| attention | xformers | not run: " in kernels_md and "| swiglu mlp | triton |" in kernels_md
    accelerated = json.loads((out / "accelerators.json").read_text())["rows"]  # skipped on the CPU, saying why
    assert accelerated[0]["status"] == "ok"
    assert all(r["status"].startswith("skipped (") for r in accelerated[1:]), accelerated
    assert "lit_gpt kernels+compile flash_attn3 (flash_attn_interface not installed)" in (
        out / "accelerators.md").read_text()
    assert "skipped" in (out / "tests.log").read_text()


def test_dry_run_of_the_data_stage_without_the_prose_deb(tmp_path):
    proc = run_gpu_sh(tmp_path, "--dry-run", "data", PROSE_DEB="")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = (tmp_path / "out" / "data.md").read_text()
    assert "| tokenizer (sentencepiece, 4,096) | pipeline, parquet, 1 worker |" in data and "| bpe (huggingface, " in data


def test_run_gpu_rejects_unknown_stage_and_a_machine_without_gpu(tmp_path):
    proc = run_gpu_sh(tmp_path, "--dry-run", "quick", "nope")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: bash benchmarks/run_gpu.sh [--dry-run]")
    if not torch.cuda.is_available():
        proc = run_gpu_sh(tmp_path, "quick")
        assert proc.returncode == 1
        assert "error: benchmarks/run_gpu.sh needs torch with a CUDA GPU" in proc.stderr


def write_log(folder, local, edges):
    folder.mkdir(parents=True)
    (folder / "1.json").write_text(json.dumps({"local": local, "edges": edges}))


@pytest.mark.parametrize("edges, missing", [
    ([["lit_gpt", "torch"], ["lit_gpt", "json"], ["__main__", "jsonargparse"]], None),
    # an image package's own imports are its image's business (this machine may have other versions)
    ([["lit_gpt", "transformers"], ["transformers", "not_on_the_image"]], None),
    ([["lit_gpt", "not_on_the_image"]], "not_on_the_image"),
    # the wheels come without their dependencies: what they import must be there too
    ([["lit_gpt", "jsonargparse"], ["jsonargparse", "not_on_the_image"]], "not_on_the_image"),
    ([["tests", "distutils"]], "distutils"),  # stdlib in 3.11, gone in the device's 3.12
])
def test_import_check(tmp_path, capsys, edges, missing):
    write_log(tmp_path / "quick", ["lit_gpt", "__main__", "tests"], edges)
    assert device_image.main([str(tmp_path)]) == (1 if missing else 0)
    err = capsys.readouterr().err
    if missing:
        assert f"error: stage quick needs {missing} (imported by" in err
    else:
        assert err == ""


def test_import_check_refuses_an_empty_log(tmp_path, capsys):
    (tmp_path / "quick").mkdir()
    assert device_image.main([str(tmp_path)]) == 1
    assert "no imports were recorded" in capsys.readouterr().err


def test_quick_keeps_rows_of_a_child_it_stops(tmp_path):
    """A part cut off by its timeout: the rows it printed before are in quick.json and quick.md already."""
    report = quick.Report(tmp_path)
    child = ("import json, time; print('noise'); print('RESULT ' + json.dumps({'check': 'kernel rope', "
             "'status': 'ok', 'fwd_err': 1e-3, 'bwd_err': 2e-3}), flush=True); time.sleep(60)")
    finished = quick.stream_rows([sys.executable, "-c", child], dict(os.environ), 3,
                                 lambda row: report.add("correctness", row))
    assert not finished
    assert json.loads((tmp_path / "quick.json").read_text())["rows"][0]["check"] == "kernel rope"
    assert "| kernel rope | ok | 1.00e-03 | 2.00e-03 |" in (tmp_path / "quick.md").read_text()


def test_kernel_check_fails_a_wrong_kernel():
    from lit_gpt.kernels import rms_norm_reference

    x, w = torch.randn(4, 64, requires_grad=True), torch.randn(64, requires_grad=True)
    ok = gpu_check.fwd_bwd_errors(lambda a, b: rms_norm_reference(a, b, 1e-5),
                                  lambda a, b: rms_norm_reference(a, b, 1e-5), (x, w))
    assert max(ok) < 1e-6
    x.grad = w.grad = None
    wrong = gpu_check.fwd_bwd_errors(lambda a, b: rms_norm_reference(a, b.roll(1), 1e-5),
                                     lambda a, b: rms_norm_reference(a, b, 1e-5), (x, w))
    assert min(wrong) > 0.1
