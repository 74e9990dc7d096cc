"""scripts/eval.py end to end on a tiny trained model with the local task (tests/tasks/tiny_mc), checked against
lm-eval's own `hf` run on the converted folder and against log-likelihoods computed with the lit model itself;
the seed tables' reporting conventions; the model card; one-line errors for bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.evaluate import markdown_table, summarize, task_manager  # lm-eval's TaskManager, cached
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
TASKS = ROOT / "tests" / "tasks"
TOKENIZER = ROOT / "data" / "tokenizer"
STEPS, BATCH, SEQ = 50, 8, 64


def training_text_ids(tok: Tokenizer, n_tokens: int) -> torch.Tensor:
    import zstandard

    ids = []
    with zstandard.open(ROOT / "data/sample_slimpajama/train/chunk1/example_train_0.jsonl.zst", "rt") as f:
        for line in f:
            row = json.loads(line)
            if row["meta"]["redpajama_set_name"] != "RedPajamaGithub":
                ids += tok.encode(row["text"][:20000], eos=True)
            if len(ids) >= n_tokens:
                break
    return torch.tensor(ids)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A training out_dir as the trainer lays it out: checkpoints/step-00000050/{state.pth, model_config.json} and
    the tokenizer files at the top, from a plain 50-step AdamW loop on the bundled sample text."""
    from lit_gpt.weights import copy_tokenizer_files

    tok = Tokenizer(TOKENIZER)
    data = training_text_ids(tok, 20000)
    config = Config.from_name("tiny", vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(STEPS):
        ix = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=g)
        x = torch.stack([data[i: i + SEQ] for i in ix])
        y = torch.stack([data[i + 1: i + SEQ + 1] for i in ix])
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0  # it learned something

    out = tmp_path_factory.mktemp("run")
    step_dir = out / "checkpoints" / f"step-{STEPS:08d}"
    step_dir.mkdir(parents=True)
    torch.save({"model": model.state_dict(), "step": STEPS, "tokens_seen": STEPS * BATCH * SEQ}, step_dir / "state.pth")
    config.save(step_dir / "model_config.json")
    copy_tokenizer_files(TOKENIZER, out)
    return out


def offline_arc_easy(folder: Path) -> Path:
    """A task folder overriding lm-eval's arc_easy with local JSON lines in the hub dataset's schema."""
    import lm_eval

    folder.mkdir()
    rows = [{"id": f"q{i}", "question": f"Which word names the number {i + 1}?", "answerKey": "ABCD"[i],
             "choices": {"text": ["one", "two", "three", "four"], "label": ["A", "B", "C", "D"]}} for i in range(4)]
    (folder / "arc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    builtin = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
    data = folder / "arc.jsonl"
    (folder / "arc_easy.yaml").write_text(
        f"task: arc_easy\ninclude: {builtin}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data}\n    validation: {data}\n    test: {data}\n")
    return folder


def lit_loglikelihood(model: GPT, tok: Tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) with the lit model, split into tokens the way lm-eval's HFLM does (encode the
    whole string, the continuation is what follows the context's tokens); BOS first, as the Llama tokenizer adds."""
    whole = tok.encode(context + continuation, bos=True)
    n_ctx = len(tok.encode(context, bos=True))
    with torch.no_grad():
        logp = model(torch.tensor([whole[:-1]]))[0].double().log_softmax(-1)
    return sum(logp[n_ctx - 1 + i, t].item() for i, t in enumerate(whole[n_ctx:]))


def test_eval_script_equals_lm_eval_hf_run(run_dir, tmp_path, capsys):
    import lm_eval

    from lit_gpt.checkpoint import load_model, load_model_state, find_config
    from lit_gpt.convert import save_hf_folder
    from scripts.eval import main

    out_json = tmp_path / "results.json"
    offline = offline_arc_easy(tmp_path / "offline")  # docs/evaluation.md's recipe: a seed task on local files
    main(["--checkpoint", str(run_dir), "--include_path", str(TASKS), "--include_path", str(offline),
          "--tasks", "tiny_mc,arc_easy", "--device", "cpu", "--batch_size", "8", "--output", str(out_json)])
    printed = capsys.readouterr().out
    assert "| Model | ARC_e | tiny_mc | avg |" in printed  # seed-table columns first, in the tables' order
    report = json.loads(out_json.read_text())
    assert report["lm_eval"]["results"]["arc_easy"]["sample_len"] == 4  # the local copy, not the hub's
    ours = report["lm_eval"]["results"]["tiny_mc"]
    assert ours["sample_len"] == 20
    assert report["training"] == {"step": STEPS, "tokens_seen": STEPS * BATCH * SEQ}
    assert report["summary"]["tiny_mc"]["metric"] == "acc_norm"
    assert report["summary"]["tiny_mc"]["value"] == ours["acc_norm,none"]
    arc = report["summary"]["arc_easy"]["value"]
    avg = 100 * (arc + ours["acc_norm,none"]) / 2
    assert f"| {run_dir.name}-step-{STEPS:08d} | {100 * arc:.2f} | {100 * ours['acc_norm,none']:.2f} | {avg:.2f} |" \
        in printed

    # lm-eval's own hf model on a folder converted separately
    step_dir = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    hf_dir = save_hf_folder(load_model_state(step_dir), find_config(step_dir), tmp_path / "hf", tokenizer_dir=run_dir)
    ref = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32", tasks=["tiny_mc"],
                                  device="cpu", batch_size=8, task_manager=task_manager([TASKS]))
    theirs = ref["results"]["tiny_mc"]
    for key in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
        assert ours[key] == theirs[key], key

    # independent: every choice's log-likelihood from the lit model itself, and the accuracies derived from them
    model, tok = load_model(step_dir), Tokenizer(TOKENIZER)
    docs = [json.loads(line) for line in (TASKS / "tiny_mc" / "tiny_mc.jsonl").read_text().splitlines()]
    samples = sorted(ref["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    acc = acc_norm = 0
    for doc, sample in zip(docs, samples):
        context = f"Question: {doc['question']}\nAnswer:"
        lls = [lit_loglikelihood(model, tok, context, " " + c) for c in doc["choices"]]
        assert lls == pytest.approx([r[0] for r in sample["filtered_resps"]], abs=1e-3)
        acc += max(range(4), key=lambda i: (lls[i], -i)) == doc["answer"]
        acc_norm += max(range(4), key=lambda i: (lls[i] / len(doc["choices"][i]), -i)) == doc["answer"]
    assert (acc / 20, acc_norm / 20) == (ours["acc,none"], ours["acc_norm,none"])


def test_model_card(run_dir, tmp_path):
    from lit_gpt.checkpoint import load_model_state, find_config
    from lit_gpt.convert import save_hf_folder
    from lit_gpt.evaluate import write_json

    step_dir = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    config = find_config(step_dir)
    state = load_model_state(step_dir)
    summary = {"tiny_mc": {"metric": "acc_norm", "value": 0.35, "stderr": 0.1}}
    eval_file = tmp_path / "eval_results.json"
    write_json(eval_file, {"summary": summary, "markdown": markdown_table("tiny-run", summary), "lm_eval": {}})

    card = save_hf_folder(state, config, tmp_path / "hf", tokenizer_dir=run_dir, model_card=True,
                          source_path=step_dir) / "README.md"
    text = card.read_text()
    n_params = sum(t.numel() for t in GPT(config).parameters())
    assert f"| parameters | {n_params:,} " in text
    assert f"| layers | {config.n_layer} |" in text and f"| vocabulary | {config.vocab_size} |" in text
    assert "| attention heads (query / key-value) | 4 / 2 (GQA" in text
    assert f"tokens seen: {STEPS * BATCH * SEQ:,}" in text and f"optimizer steps: {STEPS}" in text
    assert "## Evaluation" not in text  # no eval_results.json next to the checkpoint yet

    from lit_gpt.model_card import write_model_card

    write_model_card(tmp_path / "hf", config, step_dir, eval_results=eval_file)
    text = card.read_text()
    assert "## Evaluation" in text and "| tiny-run | 35.00 | 35.00 |" in text
    shutil.copy(eval_file, step_dir / "eval_results.json")  # where scripts/eval.py puts it: found on its own
    try:
        write_model_card(tmp_path / "hf", config, step_dir)
        assert "| tiny-run | 35.00 | 35.00 |" in card.read_text()
    finally:
        (step_dir / "eval_results.json").unlink()
    write_model_card(tmp_path / "hf", config, None)  # nothing known: no training or eval sections, no made-up numbers
    assert "## Training" not in card.read_text() and "## Evaluation" not in card.read_text()


def test_seed_table_conventions():
    results = {"results": {
        "piqa": {"acc,none": 0.70, "acc_norm,none": 0.71},
        "boolq": {"acc,none": 0.60, "acc_norm,none": 0.99},  # acc is reported even if acc_norm were present
        "winogrande": {"acc,none": 0.55, "acc_stderr,none": 0.01},
        "arc_easy": {"acc,none": 0.50, "acc_norm,none": 0.45},
        "arc_challenge": {"acc,none": 0.25, "acc_norm,none": 0.28},
        "openbookqa": {"acc,none": 0.20, "acc_norm,none": 0.30},
        "hellaswag": {"acc,none": 0.40, "acc_norm,none": 0.50},
    }}
    summary = summarize(results)
    assert list(summary) == ["hellaswag", "openbookqa", "winogrande", "arc_challenge", "arc_easy", "boolq", "piqa"]
    assert [s["metric"] for s in summary.values()] == ["acc_norm", "acc_norm", "acc", "acc_norm", "acc_norm", "acc",
                                                       "acc_norm"]
    assert summary["winogrande"]["stderr"] == 0.01
    header, sep, row = markdown_table("m", summary).splitlines()
    assert header == "| Model | HellaSwag | Obqa | WinoGrande | ARC_c | ARC_e | boolq | piqa | avg |"
    assert sep.count("---") == 9
    avg = 100 * (0.50 + 0.30 + 0.55 + 0.28 + 0.45 + 0.60 + 0.71) / 7
    assert row == f"| m | 50.00 | 30.00 | 55.00 | 28.00 | 45.00 | 60.00 | 71.00 | {avg:.2f} |"


def test_bad_input(run_dir, tmp_path):
    from scripts.eval import main

    # one real process: exit status, stderr, no traceback
    step_dir = run_dir / "checkpoints" / f"step-{STEPS:08d}"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval.py"), "--checkpoint", str(step_dir),
                           "--limit", "0"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: --limit must be a number of examples >= 1 or a fraction in (0, 1], got 0"

    # the others in-process (each would pay the torch/lm-eval imports again): sys.exit("error: ...") is what
    # the process above printed and exited 1 with
    bare = tmp_path / "no_tokenizer"  # weights and config, but no tokenizer here or in the parents
    bare.mkdir()
    for name in ("state.pth", "model_config.json"):
        shutil.copy(step_dir / name, bare / name)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(bare), "--limit", "2"])
    assert str(e.value) == (f"error: {bare}: no tokenizer.model or tokenizer.json in this checkpoint folder or its "
                            "parents (lm-eval needs the tokenizer)")
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(run_dir), "--include_path", str(TASKS), "--tasks", "tiny_mc,no_such_task"])
    assert str(e.value) == ("error: unknown task(s): no_such_task (list the known ones with `lm-eval ls tasks`; "
                            "add local task folders with --include_path)")
    with pytest.raises(SystemExit, match="error: .*--include_path folder not found"):
        main(["--checkpoint", str(run_dir), "--include_path", str(tmp_path / "nope"), "--tasks", "tiny_mc"])
    assert not (step_dir / "eval_results.json").exists()  # nothing written on failure
