"""Checkpoints written by the trainer before the lit_gpt/training/ split (tests/fixtures/pre_move, made by
make_pre_move_checkpoints.py at that commit) still resume to the same per-step losses and still convert to a
Hugging Face folder whose logits equal the old code's."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_trainer import losses, write_random_chunks

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "pre_move"
PROBE_IDS = torch.arange(0, 512, 37).reshape(2, 7)  # as in make_pre_move_checkpoints.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_random_chunks(tmp_path_factory.mktemp("data") / "train", "train", 40_000)  # the fixture's data


@pytest.mark.parametrize("kind, extra", [("single", ["--devices", "1"]),
                                         ("fsdp", ["--devices", "2", "--strategy", "fsdp"])])
def test_pre_move_checkpoint_resumes_to_the_same_losses(data, tmp_path, kind, extra):
    out = tmp_path / kind
    shutil.copytree(FIXTURES / kind, out, ignore=shutil.ignore_patterns("losses.json", "logits.pt"))
    cmd = [sys.executable, str(ROOT / "pretrain" / "debug.py"), "--model_name", "tiny", "--block_size", "64",
           "--train_data_dir", str(data), "--train_prefixes", "[train]", "--val_data_dir", "null",
           "--tokenizer_dir", "null", "--out_dir", str(out), "--global_batch_size", "4", "--micro_batch_size", "2",
           "--max_steps", "6", "--warmup_steps", "2", "--learning_rate", "1e-2", "--min_lr", "1e-3",
           "--log_interval", "1", "--save_interval", "3", "--loggers", "[]", "--keep_last_k", "null",
           "--accelerator", "cpu", "--resume", "auto", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 3" in proc.stdout
    expected = [tuple(x) for x in json.loads((FIXTURES / kind / "losses.json").read_text())]
    assert losses(out) == expected[3:]  # steps 4-6, bit for bit


@pytest.mark.parametrize("kind", ["single", "fsdp"])
def test_pre_move_checkpoint_converts_to_the_same_logits(tmp_path, kind):
    from transformers import LlamaForCausalLM

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert_lit_to_hf.py"),
                           str(FIXTURES / kind / "checkpoints" / "step-00000003"), str(tmp_path / "hf")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = model(PROBE_IDS).logits
    torch.testing.assert_close(logits, torch.load(FIXTURES / kind / "logits.pt"), rtol=1e-5, atol=1e-5)
