"""The training loop in one process: learning on the sample corpus, logs, SIGTERM + exact resume, the LR schedule,
checkpoint rotation and the one-line errors. Multi-process runs (FSDP, DDP, 2 nodes) are in test_train_multiprocess.py."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gpt.data.packed import PackedDatasetWriter
from lit_gpt.layout import latest_checkpoint
from lit_gpt.training import TrainArgs, cli
from lit_gpt.training.args import parse_args
from lit_gpt.training.metrics import read_metrics
from lit_gpt.training.optim import cosine_lr, wsd_lr

ROOT = Path(__file__).resolve().parents[1]


def write_random_chunks(folder: Path, prefix: str, n_tokens: int, vocab: int = 512, chunk: int = 4096,
                        seed: int = 0) -> Path:
    """Random token chunks with a learnable pattern (each token repeats the previous one half the time)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, n_tokens)
    repeat = rng.random(n_tokens) < 0.5
    for i in range(1, n_tokens):
        if repeat[i]:
            tokens[i] = tokens[i - 1]
    with PackedDatasetWriter(folder, prefix, chunk, vocab) as writer:
        writer.add_array(tokens)
    return folder


def tokenize_sample_corpus(dest: Path) -> Path:
    """The bundled SlimPajama-layout sample, tokenized with the bundled 4096-piece tokenizer into packed chunks."""
    import zstandard

    from lit_gpt.tokenizer import Tokenizer

    tokenizer = Tokenizer(ROOT / "data" / "tokenizer")
    for split in ("train", "validation"):
        with PackedDatasetWriter(dest / split, f"{split}_slimpajama", 2049 * 16, 4096) as writer:
            for path in sorted((ROOT / "data" / "sample_slimpajama" / split).rglob("*.jsonl.zst")):
                with open(path, "rb") as f:
                    text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
                for line in text.splitlines():
                    writer.add_array(np.array(tokenizer.encode(json.loads(line)["text"], eos=True)))
    return dest


def tiny_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name", "tiny", "--train_data_dir", str(data), "--train_prefixes", "[train]", "--out_dir", str(out),
            "--global_batch_size", "4", "--micro_batch_size", "2", "--max_steps", "6", "--warmup_steps", "2",
            "--learning_rate", "1e-2", "--min_lr", "1e-3", "--log_interval", "1", "--save_interval", "3",
            "--accelerator", "cpu", "--loggers", "[]", "--keep_last_k", "null", *extra]


def run(argv: list[str], defaults: TrainArgs = TrainArgs()) -> None:
    cli(defaults, argv)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), r["loss"]) for r in read_metrics(out / "metrics.csv") if r["loss"] is not None]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_random_chunks(tmp_path_factory.mktemp("data") / "train", "train", 40_000)


# ---- learning, logs -------------------------------------------------------------------------------
def test_debug_model_learns_on_sample_corpus_and_logs_throughput(tmp_path):
    data = tokenize_sample_corpus(tmp_path / "data")
    out = tmp_path / "out"
    run(["--model_name", "debug", "--block_size", "128", "--train_data_dir", str(data / "train"),
         "--val_data_dir", str(data / "validation"), "--tokenizer_dir", str(ROOT / "data" / "tokenizer"),
         "--out_dir", str(out), "--global_batch_size", "8", "--micro_batch_size", "8", "--max_steps", "40",
         "--warmup_steps", "5", "--learning_rate", "3e-3", "--min_lr", "3e-4", "--log_interval", "5",
         "--eval_interval", "20", "--eval_iters", "2", "--save_interval", "40", "--accelerator", "cpu",
         "--peak_tflops", "1.0", "--loggers", "[tensorboard]"])
    rows = read_metrics(out / "metrics.csv")
    train = [r for r in rows if r["loss"] is not None]
    val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert train[0]["step"] == 1 and train[0]["loss"] > 8.0  # ~ln(4096) = 8.3 at the start
    last = sum(r["loss"] for r in train[-3:]) / 3  # single steps are noisy (8 sequences): average the last 3 logs
    assert last < train[0]["loss"] - 1.5, [r["loss"] for r in train]
    assert len(val) == 2 and val[1] < val[0] < 8.0
    # throughput and MFU columns: MFU = per-device tokens/s x FLOPs per token / peak (1 TFLOP/s given)
    from lit_gpt.config import Config

    flops = Config.from_name("debug").flops_per_token(128)
    for r in train[1:]:
        assert r["tokens_per_s"] > 0 and r["tokens_per_s_per_device"] == r["tokens_per_s"]
        assert r["mfu"] == pytest.approx(r["tokens_per_s_per_device"] * flops / 1e12, rel=1e-9)
        assert r["eta_s"] is not None and r["lr"] > 0 and r["grad_norm"] > 0
    assert train[-1]["tokens"] == 40 * 8 * 128
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "val_loss", "tokens_per_s", "tokens_per_s_per_device", "mfu", "lr", "grad_norm"} <= tags
    assert [e.step for e in events.Scalars("mfu")][-1] == 40
    # the out_dir is self-contained: config, tokenizer, a checkpoint the convert helper reads
    assert (out / "model_config.json").is_file() and (out / "tokenizer.model").is_file()
    from lit_gpt.checkpoint import load_model

    model = load_model(latest_checkpoint(out))
    assert model.config.name == "debug"


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_sigterm_saves_and_resume_is_exact(tiny_data, tmp_path, monkeypatch, optimizer):
    """SIGTERM after step 4 -> checkpoint at step 4 and a clean return; resuming gives the uninterrupted run's
    per-step losses bit for bit and the same final weights (Muon: its momentum buffers too)."""
    from lit_gpt.checkpoint import load_model_state

    common = ["--global_batch_size", "8", "--optimizer", optimizer]
    run(tiny_args(tiny_data, tmp_path / "a", *common))
    monkeypatch.setenv("LIT_GPT_SIGTERM_AFTER_STEP", "4")
    run(tiny_args(tiny_data, tmp_path / "b", *common, "--save_interval", "100"))
    monkeypatch.delenv("LIT_GPT_SIGTERM_AFTER_STEP")
    assert latest_checkpoint(tmp_path / "b").name == "step-00000004"
    assert losses(tmp_path / "b")[-1][0] == 4
    other = "adamw" if optimizer == "muon" else "muon"
    expect_error(tiny_args(tiny_data, tmp_path / "b", *common, "--resume", "auto", "--optimizer", other),
                 f"holds {optimizer} optimizer state but this run uses --optimizer {other}")
    run(tiny_args(tiny_data, tmp_path / "b", *common, "--resume", "auto"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b") and len(losses(tmp_path / "a")) == 6
    wa, wb = load_model_state(tmp_path / "a"), load_model_state(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # the whole state at step 6, random generators included (nothing in this model draws, so the losses alone would
    # not show a resumed run's generators drifting from the uninterrupted run's)
    sa, sb = (torch.load(latest_checkpoint(tmp_path / r) / "state.pth", weights_only=True) for r in "ab")
    (ra,), (rb,) = sa["rng"], sb["rng"]
    assert torch.equal(ra["torch"], rb["torch"]) and ra["python"] == rb["python"] and ra["numpy"] == rb["numpy"]
    oa, ob = (s["optimizer"]["state"] for s in (sa, sb))
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    kinds = {k for i in oa for k in oa[i]}
    assert kinds == ({"step", "exp_avg", "exp_avg_sq", "momentum_buffer"} if optimizer == "muon"
                     else {"step", "exp_avg", "exp_avg_sq"})
    # consolidation keeps the weights only, whatever the optimizer
    from lit_gpt.checkpoint import consolidate

    consolidate(tmp_path / "b", tmp_path / "lit")
    wc = load_model_state(tmp_path / "lit")
    assert wc.keys() == wb.keys() and all(torch.equal(wc[k], wb[k]) for k in wb)


def test_keep_last_k_and_unfinished_checkpoint_ignored(tiny_data, tmp_path):
    out = tmp_path / "out"
    run(tiny_args(tiny_data, out, "--save_interval", "1", "--keep_last_k", "2"))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000005", "step-00000006"]
    # a crash mid-save leaves a .tmp folder: resume auto skips it and uses the newest complete checkpoint
    (out / "checkpoints" / "step-00000007.tmp").mkdir()
    (out / "checkpoints" / "step-00000007.tmp" / "state.pth").write_bytes(b"partial")
    assert latest_checkpoint(out).name == "step-00000006"
    # a fresh run (no --resume) into that out_dir is refused rather than mixing two runs' checkpoints
    expect_error(tiny_args(tiny_data, out), "holds checkpoints of an earlier run", "--resume auto")


def test_out_dir_lock_refuses_a_second_run_and_is_taken_over_after_a_crash(tiny_data, tmp_path):
    """A run holds out_dir/.lock (flock) for its whole length: a second run there is refused with one line naming the
    holder; the lock of a SIGKILLed run is released by the kernel, so the next run takes it over."""
    import os
    import socket

    from lit_gpt.training.processes import lock_folder

    out = tmp_path / "out"
    with lock_folder(out):  # this process plays the running first run
        expect_error(tiny_args(tiny_data, out), f"{out}: in use by another run (pid {os.getpid()} on "
                     f"{socket.gethostname()} since ", "pick another folder")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lit_gpt.training.processes import lock_folder; "
                               "lock = lock_folder(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
                               str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline() == "locked\n"
        expect_error(tiny_args(tiny_data, out), f"(pid {holder.pid} on ")
    finally:
        holder.kill()
        holder.wait()
    run(tiny_args(tiny_data, out, "--max_steps", "1"))  # the dead run's lock is taken over
    assert latest_checkpoint(out).name == "step-00000001"


def test_cosine_lr_schedule():
    lrs = [cosine_lr(s, 4e-4, 4e-5, 10, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(4e-5) and lrs[9] == pytest.approx(4e-4)
    assert lrs[10] == pytest.approx(4e-4) and lrs[60] == pytest.approx((4e-4 + 4e-5) / 2)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 4e-5
    assert cosine_lr(110, 4e-4, 4e-5, 10, 110) == 4e-5


def test_wsd_lr_schedule():
    """Warm-up 10, constant until step 80, then (1 - sqrt) or linear down to min_lr at step 100."""
    lrs = [wsd_lr(s, 4e-4, 4e-5, 10, 100, 80) for s in range(101)]
    assert lrs[0] == pytest.approx(4e-5) and lrs[9] == pytest.approx(4e-4)
    assert all(lr == 4e-4 for lr in lrs[10:81])  # stable: exactly the peak, up to and including the decay's start
    assert lrs[85] == pytest.approx(4e-5 + 3.6e-4 * (1 - 0.5))  # a quarter of the decay: 1 - sqrt(0.25)
    assert all(a > b for a, b in zip(lrs[80:100], lrs[81:101])) and lrs[100] == pytest.approx(4e-5)
    linear = [wsd_lr(s, 4e-4, 4e-5, 10, 100, 80, "linear") for s in range(101)]
    assert linear[:81] == lrs[:81] and linear[90] == pytest.approx((4e-4 + 4e-5) / 2)
    assert all(lin > sq for lin, sq in zip(linear[81:100], lrs[81:100]))  # 1 - sqrt drops faster at first
    assert wsd_lr(150, 4e-4, 4e-5, 10, 100, 80) == pytest.approx(4e-5)


def test_wsd_decay_from_a_stable_checkpoint(tiny_data, tmp_path):
    """A wsd run's stable-phase checkpoint, resumed into a new out_dir with --decay_start_step and a shorter
    --max_steps, finishes a model: the lr follows the stable run up to the branch point, then decays to min_lr."""
    common = ["--lr_schedule", "wsd", "--max_steps", "20", "--save_interval", "4"]
    run(tiny_args(tiny_data, tmp_path / "long", *common))
    long = {int(r["step"]): r["lr"] for r in read_metrics(tmp_path / "long" / "metrics.csv") if r["lr"] is not None}
    last = 1e-3 + 9e-3 * (1 - 0.75**0.5)  # the last step (0-based 19) is 3/4 into the decay (steps 16..20)
    assert long[5] == long[17] == 1e-2 and long[18] < 1e-2 and long[20] == pytest.approx(last)  # logged step = i + 1
    branch = tmp_path / "long" / "checkpoints" / "step-00000008"
    run(tiny_args(tiny_data, tmp_path / "short", *common, "--resume", str(branch), "--decay_start_step", "8",
                  "--max_steps", "12"))
    short = [(r["step"], r["lr"]) for r in read_metrics(tmp_path / "short" / "metrics.csv") if r["lr"] is not None]
    assert [s for s, _ in short] == [9, 10, 11, 12] and short[0][1] == 1e-2 and short[-1][1] == pytest.approx(last)
    assert losses(tmp_path / "short")[0] == losses(tmp_path / "long")[8]  # step 9: same weights, data and lr
    expect_error(tiny_args(tiny_data, tmp_path / "bad", "--lr_schedule", "wsd", "--decay_start_step", "6"),
                 "wsd decay would start at step 6", "max_steps 6")


def test_error_muon_lr_without_learning_rate(tiny_data, tmp_path):
    """--muon_lr is a multiple of the scheduled learning_rate: with learning_rate 0 it would be undefined."""
    expect_error(tiny_args(tiny_data, tmp_path / "out", "--optimizer", "muon", "--learning_rate", "0", "--muon_lr",
                           "1e-2"), "--muon_lr follows the schedule of --learning_rate", "must be > 0")


def test_cli_yaml_and_overrides(tmp_path):
    for name in ("microllama", "tinyllama", "debug"):
        args = parse_args(TrainArgs(), ["--config", str(ROOT / "configs" / f"{name}.yaml")])
        assert args.learning_rate > 0 and args.global_batch_size % args.micro_batch_size == 0
    args = parse_args(TrainArgs(), ["--config", str(ROOT / "configs" / "microllama.yaml"), "--micro_batch_size", "8"])
    assert (args.model_name, args.global_batch_size, args.micro_batch_size) == ("MicroLlama-300M", 48, 8)
    help_text = subprocess.run([sys.executable, str(ROOT / "pretrain" / "microllama.py"), "--help"],
                               capture_output=True, text=True, check=True).stdout
    from dataclasses import fields

    for f in fields(TrainArgs):  # every option is documented
        assert f"--{f.name}" in help_text
    assert "Sequences per device per forward pass" in help_text


# ---- one-line errors ------------------------------------------------------------------------------
def expect_error(argv: list[str], *fragments: str) -> str:
    with pytest.raises(SystemExit) as e:
        run(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_error_missing_data_folder_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "pretrain" / "microllama.py"), *tiny_args(tmp_path / "nope",
                          tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nope: data folder not found" in last and "Traceback" not in proc.stderr


def test_error_no_chunks_and_bad_header(tmp_path):
    (tmp_path / "empty").mkdir()
    expect_error(tiny_args(tmp_path / "empty", tmp_path / "out"), "empty", "train")
    bad = write_random_chunks(tmp_path / "bad", "train", 5000)
    chunk = sorted(bad.glob("train*.bin"))[0]
    chunk.write_bytes(b"NOTPKDS" + chunk.read_bytes()[7:])
    expect_error(tiny_args(bad, tmp_path / "out"), chunk.name, "bad magic")


def test_error_batch_sizes(tiny_data, tmp_path):
    expect_error(tiny_args(tiny_data, tmp_path / "o", "--global_batch_size", "5"),
                 "global_batch_size 5 is not divisible by micro_batch_size 2")


def test_error_resume_missing_or_other_shape(tiny_data, tmp_path):
    expect_error(tiny_args(tiny_data, tmp_path / "o", "--resume", str(tmp_path / "missing")),
                 "missing: resume checkpoint not found")
    run(tiny_args(tiny_data, tmp_path / "o", "--max_steps", "1"))
    other = json.dumps({"name": "tiny2", "block_size": 64, "vocab_size": 512, "n_layer": 3, "n_embd": 32,
                        "n_head": 4, "n_query_groups": 2, "intermediate_size": 88})
    (tmp_path / "tiny2.json").write_text(other)
    expect_error(tiny_args(tiny_data, tmp_path / "o", "--resume", "auto", "--model_config", str(tmp_path / "tiny2.json")),
                 "step-00000001", "another model shape", "n_layer 2 -> 3")


def test_error_out_of_memory_hint(tiny_data, tmp_path, monkeypatch):
    from lit_gpt.model import GPT

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(GPT, "forward", oom)
    expect_error(tiny_args(tiny_data, tmp_path / "o"), "out of memory", "lower --micro_batch_size",
                 "--activation_checkpointing true")


def test_activation_checkpointing_same_loss(tiny_data, tmp_path):
    """Recomputing activations changes memory, not the math: same per-step losses as without."""
    run(tiny_args(tiny_data, tmp_path / "a", "--max_steps", "2"))
    run(tiny_args(tiny_data, tmp_path / "b", "--max_steps", "2", "--activation_checkpointing", "true"))
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _ in la] == [1, 2] and all(math.isclose(x, y, rel_tol=1e-6) for (_, x), (_, y) in zip(la, lb))


def test_init_checkpoint_for_continued_pretraining(tiny_data, tmp_path):
    """--init_checkpoint loads the weights (then fresh optimizer/data): with lr 0 one step leaves them untouched."""
    from lit_gpt.checkpoint import load_model_state

    run(tiny_args(tiny_data, tmp_path / "a", "--max_steps", "2"))
    run(tiny_args(tiny_data, tmp_path / "b", "--max_steps", "1", "--learning_rate", "0", "--min_lr", "0",
                  "--init_checkpoint", str(tmp_path / "a")))
    a, b = load_model_state(tmp_path / "a"), load_model_state(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "b")[0][1] < losses(tmp_path / "a")[0][1]  # starts where run a left off
    expect_error(tiny_args(tiny_data, tmp_path / "c", "--model_name", "debug", "--block_size", "64",
                           "--init_checkpoint", str(tmp_path / "a")), "weights do not match config 'debug'")


def test_error_tokens_beyond_vocab(tmp_path):
    data = write_random_chunks(tmp_path / "big", "train", 5000, vocab=4096)
    expect_error(tiny_args(data, tmp_path / "o"), "big: token id", ">= the model's vocab_size 512")


def test_error_unknown_or_missing_logger(tiny_data, tmp_path):
    expect_error(tiny_args(tiny_data, tmp_path / "a", "--loggers", "[mlflow]"), "unknown logger(s) ['mlflow']")
    try:
        import wandb  # noqa: F401
    except ImportError:
        expect_error(tiny_args(tiny_data, tmp_path / "b", "--loggers", "[wandb]"), "pip install wandb")


# ---- lm-eval during training ----------------------------------------------------------------------
def tiny_4096_args(data: Path, out: Path, config: Path, *extra: str) -> list[str]:
    """tiny_args with the bundled 4096-piece tokenizer (lm-eval tokenizes the task text with it)."""
    return tiny_args(data, out, "--model_config", str(config), "--tokenizer_dir", str(ROOT / "data" / "tokenizer"),
                     *extra)


@pytest.fixture(scope="module")
def tiny_4096(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data4096")
    config = folder / "tiny4096.json"
    config.write_text(json.dumps({"name": "tiny4096", "block_size": 64, "vocab_size": 4096, "n_layer": 2,
                                  "n_embd": 32, "n_head": 4, "n_query_groups": 2, "intermediate_size": 88}))
    return write_random_chunks(folder / "train", "train", 20_000, vocab=4096), config


@pytest.mark.slow  # ~40 s on 2 cores: lm-eval indexes its task YAMLs twice (startup check, child process)
def test_lm_eval_during_training_logs_and_leaves_training_untouched(tiny_4096, tmp_path):
    """--lm_eval_interval 2 (save_interval 2, 3 steps): the step-2 checkpoint is scored on tests/tasks/tiny_mc,
    the score lands in metrics.csv as lm_eval/tiny_mc and eval_results.json in that step folder; the per-step
    losses (step 3 comes after the evaluation) equal a run without it, bit for bit."""
    from lit_gpt.layout import load_results

    data, config = tiny_4096
    base = ["--max_steps", "3", "--save_interval", "2"]
    run(tiny_4096_args(data, tmp_path / "plain", config, *base))
    run(tiny_4096_args(data, tmp_path / "eval", config, *base, "--lm_eval_interval", "2", "--lm_eval_tasks",
                       "[tiny_mc]", "--lm_eval_include_path", str(ROOT / "tests" / "tasks"), "--lm_eval_limit", "8",
                       "--lm_eval_batch_size", "8"))
    assert losses(tmp_path / "eval") == losses(tmp_path / "plain") and len(losses(tmp_path / "plain")) == 3
    step2 = tmp_path / "eval" / "checkpoints" / "step-00000002"
    report = load_results(step2 / "eval_results.json")
    assert report["checkpoint"] == str(step2) and report["lm_eval"]["n-samples"]["tiny_mc"]["effective"] == 8
    value = report["summary"]["tiny_mc"]["value"]
    assert report["summary"]["tiny_mc"]["metric"] == "acc_norm" and 0.0 <= value <= 1.0
    assert value == report["lm_eval"]["results"]["tiny_mc"]["acc_norm,none"]
    rows = [r for r in read_metrics(tmp_path / "eval" / "metrics.csv") if r.get("lm_eval/tiny_mc") is not None]
    assert [(r["step"], r["lm_eval/tiny_mc"], r["lm_eval/avg"]) for r in rows] == [(2, value, value)]
    assert not (tmp_path / "eval" / "checkpoints" / "step-00000003" / "eval_results.json").exists()


def test_lm_eval_args_errors(tiny_4096, tmp_path, monkeypatch):
    data, config = tiny_4096
    tasks = ["--lm_eval_include_path", str(ROOT / "tests" / "tasks"), "--lm_eval_tasks", "[tiny_mc]"]
    expect_error(tiny_4096_args(data, tmp_path / "a", config, "--lm_eval_interval", "2", *tasks),
                 "lm_eval_interval 2 must be a positive multiple of save_interval 3")
    expect_error(tiny_args(data, tmp_path / "b", "--lm_eval_interval", "3", *tasks),
                 "lm_eval_interval needs --tokenizer_dir")
    expect_error(tiny_4096_args(data, tmp_path / "c", config, "--lm_eval_interval", "3", *tasks[:2],
                                "--lm_eval_tasks", "[tiny_mc, no_such_task]"), "unknown task(s): no_such_task")
    expect_error(tiny_4096_args(data, tmp_path / "d", config, "--lm_eval_interval", "3", "--lm_eval_include_path",
                                str(tmp_path / "nope")), "nope: --lm_eval_include_path folder not found")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    expect_error(tiny_4096_args(data, tmp_path / "e", config, "--lm_eval_interval", "3", *tasks),
                 "lm_eval_interval needs lm-eval: pip install")
    assert not (tmp_path / "a").exists()  # refused before anything was written


@pytest.mark.slow
def test_compile_same_loss_and_compiles_once(tiny_data, tmp_path):
    """--compile (inductor, each Block; also with activation checkpointing, and with --compile_mode
    max-autotune-no-cudagraphs) changes speed, not the math: per-step losses match the eager run, and the Blocks
    share one compiled graph with no recompiles."""
    from torch._dynamo.utils import counters

    run(tiny_args(tiny_data, tmp_path / "eager", "--max_steps", "3"))
    for name, extra in [("compiled", []), ("compiled_ckpt", ["--activation_checkpointing", "true"]),
                        ("autotuned", ["--compile_mode", "max-autotune-no-cudagraphs"])]:
        torch._dynamo.reset()
        counters.clear()
        run(tiny_args(tiny_data, tmp_path / name, "--max_steps", "3", "--compile", "true", *extra))
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # a recompile adds a graph
        eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / name)
        assert [s for s, _ in compiled] == [1, 2, 3]
        assert all(math.isclose(x, y, rel_tol=1e-4) for (_, x), (_, y) in zip(eager, compiled)), (eager, compiled)


# ---- a full disk, damaged checkpoints -------------------------------------------------------------
def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(tiny_data, tmp_path, monkeypatch):
    """The disk fills up while the step-2 checkpoint is written (the file write fails with ENOSPC, as a
    writer does on a full disk): one line saying so, where, and how much a checkpoint needs; no partial folder; the
    step-1 checkpoint intact. Too little free space before a save fails the same way, before writing anything."""
    import errno

    import lit_gpt.training.checkpointer as checkpointer

    real_save = checkpointer.write_file

    def save_on_full_disk(checkpoint, path):
        if "step-00000002" not in str(path):
            return real_save(checkpoint, path)
        Path(path).write_bytes(b"PK\x03\x04" + bytes(1000))  # part of the file reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpointer, "write_file", save_on_full_disk)
    out = tmp_path / "out"
    msg = expect_error(tiny_args(tiny_data, out, "--max_steps", "2", "--save_interval", "1"),
                       f"{out / 'checkpoints'}: disk full: a checkpoint needs about",
                       "free there (checkpoint step-00000002 not saved)")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"], msg
    from lit_gpt.checkpoint import load_model_state

    assert load_model_state(out / "checkpoints" / "step-00000001")  # checksums verified: intact

    monkeypatch.setattr(checkpointer, "write_file", real_save)
    import shutil
    from collections import namedtuple

    free = namedtuple("usage", "total used free")(10**9, 10**9 - 1000, 1000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)
    expect_error(tiny_args(tiny_data, tmp_path / "early", "--save_interval", "1"),
                 "disk full: a checkpoint needs about", "0.00 MB free there (checkpoint step-00000001 not saved)")
    assert list((tmp_path / "early" / "checkpoints").iterdir()) == []


def test_background_save_writes_what_a_save_at_once_writes_and_its_failure_surfaces(tiny_data, tmp_path, monkeypatch):
    """--async_save (the default) writes step 3 from a thread while steps 4-6 run: the same state, bit for bit, as
    a save made at once. A background write that fails (a full disk) stops the run at the next save, with the one
    line a failed save at once gives; its partial folder is removed and training had gone on meanwhile."""
    import errno

    import lit_gpt.training.checkpointer as checkpointer

    run(tiny_args(tiny_data, tmp_path / "now", "--async_save", "false"))
    run(tiny_args(tiny_data, tmp_path / "bg"))
    a, b = (torch.load(tmp_path / r / "checkpoints" / "step-00000003" / "state.pth", weights_only=True)
            for r in ("now", "bg"))
    assert a.keys() == b.keys() and a["step"] == b["step"] == 3
    flat = [torch.utils._pytree.tree_flatten(s)[0] for s in (a, b)]
    assert all(torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(*flat))

    real_save = checkpointer.write_file

    def full_disk_at_step_3(checkpoint, path):
        if "step-00000003" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(checkpoint, path)

    monkeypatch.setattr(checkpointer, "write_file", full_disk_at_step_3)
    out = tmp_path / "full"
    expect_error(tiny_args(tiny_data, out, "--save_interval", "3", "--max_steps", "9"),
                 "disk full", "(checkpoint step-00000003 not saved)")
    assert list((out / "checkpoints").iterdir()) == []
    assert losses(out)[-1][0] == 6  # the failure surfaced when step 6's save waited for step 3's


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_at_resume_consolidate_and_convert(tiny_data, tmp_path, capsys):
    """One flipped bit in the middle of a saved state.pth (inside a weight): resuming, consolidating and exporting
    each stop with one line naming the damaged file (torch.load alone reads the garbage). A consolidated folder
    carries checksums too. A checkpoint without checksums.json (an older version's) loads with one warning."""
    from lit_gpt.checkpoint import consolidate, load_model_state
    from lit_gpt.layout import CHECKSUMS

    out = tmp_path / "out"
    run(tiny_args(tiny_data, out, "--max_steps", "3"))
    step = latest_checkpoint(out)
    files = json.loads((step / CHECKSUMS).read_text())["files"]
    assert set(files) == {"state.pth", "model_config.json"}
    lit = consolidate(step, tmp_path / "lit")
    assert set(json.loads((lit / CHECKSUMS).read_text())["files"]) == {"lit_model.pth", "model_config.json",
                                                                        "train_metadata.json"}

    state = step / "state.pth"
    flip_byte(state, state.stat().st_size // 2)
    torch.load(state, weights_only=True)  # still loads: only the checksum tells
    damaged = f"{state}: damaged checkpoint file"
    expect_error(tiny_args(tiny_data, out, "--resume", "auto", "--max_steps", "4"), damaged)
    for script, argv in (("consolidate.py", [str(step), str(tmp_path / "c")]),
                         ("convert_lit_to_hf.py", [str(out), str(tmp_path / "hf")])):
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv], capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.strip() == f"error: {damaged}: its checksum differs from the " \
               f"one saved in {CHECKSUMS}", proc.stderr
        assert not (tmp_path / ("c" if script == "consolidate.py" else "hf")).exists()
    weights = lit / "lit_model.pth"
    flip_byte(weights, weights.stat().st_size // 2)
    with pytest.raises(ValueError, match=f"{weights}: damaged checkpoint file"):
        load_model_state(lit)

    (lit / CHECKSUMS).unlink()  # as an older version wrote it
    capsys.readouterr()
    load_model_state(lit)
    err = capsys.readouterr().err
    assert err == f"warning: {lit}: no {CHECKSUMS} (written before checkpoints carried checksums): its bytes are " \
                  f"not verified\n"
