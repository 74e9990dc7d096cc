"""The trainer on one CUDA GPU (skipped without one): the paths the CPU tests cannot reach. bf16-mixed autocast with
the Triton kernels and a compiled Block; FSDP2 on one device (bf16 params, fp32 reductions, fused AdamW on DTensors,
a sharded checkpoint) killed and resumed."""

import math

import pytest
import torch

from lit_gpt.training.metrics import read_metrics
from tests.test_train_multiprocess import args as fsdp_args
from tests.test_train_multiprocess import final_weights, launch
from lit_gpt.layout import latest_checkpoint
from tests.test_trainer import losses, run, tiny_args, write_random_chunks

pytestmark = pytest.mark.cuda
GPU = ["--accelerator", "cuda", "--devices", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_random_chunks(tmp_path_factory.mktemp("data") / "train", "train", 200_000)


def test_bf16_kernels_compile_learns_and_reports_speed(data, tmp_path):
    out = tmp_path / "out"
    run(tiny_args(data, out, *GPU, "--model_name", "debug", "--block_size", "256", "--global_batch_size", "8",
                  "--micro_batch_size", "4", "--max_steps", "40", "--warmup_steps", "5", "--learning_rate", "3e-3",
                  "--log_interval", "10", "--save_interval", "40", "--kernels", "true", "--compile", "true"))
    logged = losses(out)
    assert [s for s, _ in logged] == [1, 10, 20, 30, 40]
    assert logged[-1][1] < logged[0][1] - 1.0, logged  # the repeat-the-previous-token pattern is being learned
    last = read_metrics(out / "metrics.csv")[-1]
    assert last["tokens_per_s"] > 0 and 0 < last["mfu"] < 1 and last["peak_mem_gib"] > 0, last
    assert (latest_checkpoint(out) / "state.pth").exists()


def test_fsdp_one_device_kill_and_resume(data, tmp_path):
    """FSDP2 on one GPU with bf16 mixed precision: SIGKILL after step 5, resume from step 4. GPU reductions are not
    bitwise reproducible run to run, so the comparison with the uninterrupted run is to bf16-level tolerance."""
    common = [*GPU, "--strategy", "fsdp", "--global_batch_size", "4"]
    full = launch(fsdp_args(data, tmp_path / "full", *common))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "strategy fsdp, 1 processes" in full.stdout and "precision bf16-mixed" in full.stdout
    assert (latest_checkpoint(tmp_path / "full") / "state").is_dir()

    killed = launch(fsdp_args(data, tmp_path / "crash", *common), {"LIT_GPT_KILL_AFTER_STEP": "5"})
    assert killed.returncode != 0
    assert latest_checkpoint(tmp_path / "crash").name == "step-00000004"
    resumed = launch(fsdp_args(data, tmp_path / "crash", *common, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout

    expected, got = losses(tmp_path / "full"), losses(tmp_path / "crash")
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 9))
    assert all(math.isclose(x, y, rel_tol=1e-2) for (_, x), (_, y) in zip(expected, got)), (expected, got)
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "crash")
    assert a.keys() == b.keys()
    for k in a:  # relative norm: Adam turns tiny gradient noise into +-lr steps on single elements
        rel = float((b[k].float() - a[k].float()).norm() / a[k].float().norm())
        assert rel < 1e-2, f"{k}: resumed weights differ from the uninterrupted run by {rel:.3g} (relative norm)"
