"""Scale-out on the CPU (gloo): HSDP on a 2 x 2 mesh of 4 processes and FSDP2 without reshard-after-forward train
like full FSDP2 (per-step losses within float tolerance) and an HSDP checkpoint resumes."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lit_gpt.layout import latest_checkpoint
from test_train_multiprocess import (LONG, ROOT, args, command, data, free_port, launch,  # noqa: F401 (data)
                                     signal_srun_tasks, stopped_at)
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
    killed = launch(args(data, tmp_path / "hsdp", *hybrid, "--reshard_after_forward", "false", "--async_save", "false"),
                    {"LIT_GPT_KILL_AFTER_STEP": "3"})  # saved at once: step 2 is complete when step 3 ends
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


TORCHRUN = str(Path(sys.executable).parent / "torchrun")


@pytest.mark.slow
def test_torchrun_runs_the_recipe_and_fabric_resumes_it(data, tmp_path):  # noqa: F811
    """`torchrun --nproc_per_node 2 pretrain/debug.py` with the recipe's `--devices auto`: the launcher's counts
    win, so it is one 2-process FSDP run (not two runs of one); its checkpoint resumes under Fabric's own launcher."""
    out = tmp_path / "out"
    argv = args(data, out, "--accelerator", "cpu", "--max_steps", "3", "--save_interval", "3")
    proc = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", str(free_port()),
                           str(ROOT / "pretrain" / "debug.py"), *argv], capture_output=True, text=True, timeout=240,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "strategy fsdp, 2 processes (1 node(s))" in proc.stdout
    resumed = launch([*argv, "--devices", "2", "--max_steps", "4", "--resume", "auto"])
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr[-3000:]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]


@pytest.mark.parametrize("env, expected", [
    ({"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}, (4, 2)),
    ({"SLURM_NTASKS": "16", "SLURM_NNODES": "2", "SLURM_JOB_NAME": "train"}, (8, 2)),
    ({}, ("auto", 1)),
])
def test_launcher_counts_win_over_the_recipes(monkeypatch, env, expected):
    from lit_gpt.training.args import TrainArgs
    from lit_gpt.training.launch import _apply_launcher_env

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args_ = _apply_launcher_env(TrainArgs())
    assert (args_.devices, args_.num_nodes) == expected


SCONTROL = """#!/bin/sh
# stands in for SLURM's scontrol: `show job` says whether the job is requeueable; `requeue` records its arguments and
# fails when told to
if [ "$1" = show ]; then echo "JobId=$3 JobName=train Requeue=${SCONTROL_REQUEUE:-1} Restarts=0"; exit 0; fi
echo "$@" >> "$SCONTROL_LOG"
echo "scontrol: error: Requeue of JobId=$2 disabled" >&2
exit "${SCONTROL_STATUS:-0}"
"""


def stand_in_scontrol(tmp_path: Path, status: int = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
            "SCONTROL_STATUS": str(status)}


@pytest.mark.slow
def test_time_limit_signal_saves_requeues_once_and_exits_0(data, tmp_path):  # noqa: F811
    """SLURM's warning before the time limit (`--signal=USR1@120`: SIGUSR1 to every task of the simulated srun):
    both tasks stop after the same step, save it, rank 0 alone runs `scontrol requeue <job id>`, and both exit 0."""
    env = stand_in_scontrol(tmp_path)
    cmd = command(args(data, tmp_path / "out", "--accelerator", "cpu", *LONG, "--resume", "auto"))
    assert signal_srun_tasks(cmd, tmp_path / "rank0.txt", signal.SIGUSR1, env) == [0, 0]
    out = (tmp_path / "rank0.txt").read_text()
    step = stopped_at(out, "SIGUSR1")
    assert latest_checkpoint(tmp_path / "out").name == f"step-{step:08d}"
    assert (tmp_path / "scontrol.log").read_text() == "requeue 1\n"
    assert "requeued SLURM job 1: it resumes from this checkpoint" in out
    assert "not requeueable" not in out  # the start-up check found the job requeueable


def test_requeue_is_auto_under_slurm_and_a_refusal_is_one_line(tmp_path, monkeypatch):
    from lit_gpt.training.processes import requeue_slurm_job, requeue_wanted

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not requeue_wanted(None) and requeue_wanted(True)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert requeue_wanted(None) and not requeue_wanted(False)
    for key, value in stand_in_scontrol(tmp_path, status=1).items():
        monkeypatch.setenv(key, value)
    assert requeue_slurm_job() == ("could not requeue SLURM job 42 (scontrol: error: Requeue of JobId=42 disabled); "
                                   "submit with --requeue, or resubmit it: it continues with --resume auto")
    assert (tmp_path / "scontrol.log").read_text() == "requeue 42\n"


def test_a_job_that_cannot_be_requeued_is_told_at_start_up(tmp_path, monkeypatch):
    from lit_gpt.training.processes import requeue_problem

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert requeue_problem() == "SLURM_JOB_ID is not set (not a SLURM job)"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol
    assert requeue_problem().startswith("`scontrol show job 42` failed: ")
    for key, value in stand_in_scontrol(tmp_path).items():
        monkeypatch.setenv(key, value)
    assert requeue_problem() is None
    monkeypatch.setenv("SCONTROL_REQUEUE", "0")
    assert requeue_problem() == "SLURM job 42 is not requeueable (Requeue=0: submitted without --requeue)"


def test_slurm_and_kubernetes_examples_parse(monkeypatch):
    """The batch script is valid bash asking for the time-limit signal the trainer handles and a requeueable job; the
    PyTorchJob is valid YAML; both training command lines are accepted by the recipe's parser."""
    import shlex

    import yaml

    from lit_gpt.training.args import TrainArgs, parse_args

    monkeypatch.chdir(ROOT)
    sbatch = ROOT / "examples" / "slurm" / "tinyllama.sbatch"
    assert subprocess.run(["bash", "-n", str(sbatch)]).returncode == 0
    text = sbatch.read_text()
    assert "#SBATCH --signal=USR1@120" in text and "#SBATCH --requeue" in text
    srun = text[text.index("\nsrun "):].replace("\\\n", " ")
    job = yaml.safe_load((ROOT / "examples" / "kubernetes" / "tinyllama-pytorchjob.yaml").read_text())
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    for argv in (shlex.split(srun, comments=True), pod["containers"][0]["command"]):
        script = argv.index("pretrain/tinyllama.py")
        parsed = parse_args(TrainArgs(), argv[script + 1:])
        assert parsed.resume == "auto" and parsed.fsdp_mode == "hybrid" and parsed.model_name == "TinyLlama-1.1B"


RECORD_BLOCKS = """# pretrain/debug.py (every rank) recording each block the loader reads: '<source> <first token>' per line
import os, sys

sys.path.insert(0, ROOT + "/pretrain")
import lit_gpt.data.packed as packed

read = packed._Blocks.__getitem__


def record(self, key):
    with open(os.path.join(LOG, f"blocks-{os.getpid()}.txt"), "a") as f:
        f.write(f"{key[0]} {key[1]}\\n")
    return read(self, key)


packed._Blocks.__getitem__ = record
from debug import DEFAULTS
from lit_gpt.training import cli

cli(DEFAULTS)
"""


@pytest.mark.slow
def test_elastic_resume_2_to_1_to_4_processes_uses_each_block_once(data, tmp_path):  # noqa: F811
    """FSDP2 checkpoints written by 2 processes resume on 1, whose checkpoint resumes on 4 (DCP reshards model and
    optimizer): the 48 blocks read over the three runs are the first 48 of the epoch's order, each read once."""
    from lit_gpt.data.packed import make_dataloader

    wrapper = tmp_path / "record_blocks.py"
    wrapper.write_text(RECORD_BLOCKS.replace("ROOT +", repr(str(ROOT)) + " +").replace("LOG,", repr(str(tmp_path)) + ","))
    out = tmp_path / "out"
    common = ["--accelerator", "cpu", "--strategy", "fsdp", "--save_interval", "2", "--resume", "auto"]
    for before, devices, steps in [(None, 2, 2), (2, 1, 4), (1, 4, 6)]:  # 16 blocks each: global batch 8, 2 steps
        run = launch(args(data, out, *common, "--devices", str(devices), "--max_steps", str(steps)), script=wrapper)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"{devices} processes" in run.stdout
        assert before is None or f"written by {before} processes, resumed on {devices}" in run.stdout, run.stdout
    keys = [line for path in tmp_path.glob("blocks-*.txt") for line in path.read_text().splitlines()]
    assert len(keys) == 48 and len(set(keys)) == 48  # none read twice
    plan = make_dataloader([(data, "train", 1.0)], 64, 1).plan
    starts = sorted(int(k.split()[1]) // plan.block_len for k in keys)
    assert starts == sorted(plan.orders[0].block(0, i) for i in range(48))  # none skipped
    assert [s for s, _ in losses(out)] == list(range(1, 7))
