"""Scale-out on the CPU (gloo): HSDP on a 2 x 2 mesh of 4 processes and FSDP2 without reshard-after-forward train
like full FSDP2 (per-step losses within float tolerance) and an HSDP checkpoint resumes."""

import math

import pytest

from lit_gpt.layout import latest_checkpoint
from test_train_multiprocess import args, data, launch  # noqa: F401 (data: the fixture)
from test_trainer import losses, run

# 4 processes x micro batch 1 x accumulation 2 = global batch 8; checkpoints at steps 2 and 4
FOUR = ["--accelerator", "cpu", "--devices", "4", "--strategy", "fsdp", "--micro_batch_size", "1",
        "--max_steps", "4", "--save_interval", "2"]


def close(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return [s for s, _ in a] == [s for s, _ in b] and all(math.isclose(x, y, rel_tol=1e-5) for (_, x), (_, y) in
                                                             zip(a, b))


@pytest.mark.slow
def test_hybrid_and_no_reshard_match_full_fsdp_and_hybrid_resumes(data, tmp_path):  # noqa: F811
    """Full FSDP2 over 4 processes, against HSDP (2 replicas x 2 shards) without reshard-after-forward SIGKILLed
    after step 3 and resumed (as HSDP, resharding again) from its step-2 checkpoint: the same per-step losses."""
    full = launch(args(data, tmp_path / "full", *FOUR))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "strategy fsdp, 4 processes" in full.stdout

    hybrid = [*FOUR, "--fsdp_mode", "hybrid", "--shard_size", "2"]
    killed = launch(args(data, tmp_path / "hsdp", *hybrid, "--reshard_after_forward", "false"),
                    {"LIT_GPT_KILL_AFTER_STEP": "3"})
    assert killed.returncode != 0 and latest_checkpoint(tmp_path / "hsdp").name == "step-00000002"
    assert "strategy fsdp (hybrid: 2 replicas x 2 shards, no reshard after forward), 4 processes" in killed.stdout
    resumed = launch(args(data, tmp_path / "hsdp", *hybrid, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stdout and "(hybrid: 2 replicas x 2 shards), 4 processes" in resumed.stdout
    a, b = losses(tmp_path / "full"), losses(tmp_path / "hsdp")
    assert close(a, b), (a, b)
    assert (latest_checkpoint(tmp_path / "hsdp") / "state").is_dir()


@pytest.mark.parametrize("extra, message", [
    (["--shard_size", "2"], "shard_size 2 needs --fsdp_mode hybrid"),
    (["--fsdp_mode", "hybrid", "--strategy", "ddp"], "fsdp_mode hybrid needs --strategy fsdp (this run uses ddp)"),
    (["--fsdp_mode", "hybrid", "--shard_size", "3"], "shard_size 3 does not divide the 4 processes"),
])
def test_sharding_options_are_checked_before_start(tmp_path, extra, message):
    argv = args(tmp_path / "data", tmp_path / "out", "--accelerator", "cpu", "--devices", "4", *extra)
    with pytest.raises(SystemExit) as e:
        run(argv)
    assert str(e.value.code).startswith(f"error: {message}"), e.value.code
