"""The benchmarks' --tiny modes run the same code paths as on a GPU (one process per variant, the step
breakdown, the per-kernel table) on the CPU, with the kernels interpreted; the tables must hold measured rows.
Every variant and the breakdown run in tests/test_run_gpu.py's rehearsal of benchmarks/run_gpu.sh."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, doc_deb


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


@pytest.mark.parametrize("tiny", [[], ["--tiny"]])  # --tiny runs the tiny model, but a typo must still fail
def test_train_throughput_rejects_unknown_model(tiny):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--model", "nope",
                           *tiny], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: unknown config name 'nope'")
    assert "Traceback" not in proc.stderr


def test_train_throughput_fails_when_a_lit_gpt_row_fails(tmp_path):
    """A peer's failure is a row; ours fails the run (so the rehearsal catches it), after writing the table."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--tiny", "--variants",
                           "lit_gpt eager", "--attention", "bogus", "--no-breakdown", "--md", str(tmp_path / "t.md")],
                          capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert proc.returncode == 1
    assert "error: lit_gpt rows failed: lit_gpt eager (micro batch 1): error: ValueError" in proc.stderr
    assert "| lit_gpt eager | 1 | error: ValueError: unknown attention backend 'bogus'" in (tmp_path / "t.md").read_text()


def test_kernel_microbenchmarks_tiny():
    out = run("kernels.py", "--tiny", "--no-compile")
    for kernel in ("rms_norm", "add_rms_norm", "rope", "swiglu", "linear_cross_entropy", "swiglu mlp"):
        for impl in ("eager", "triton"):
            assert re.search(rf"^\| {kernel} \| {impl} \| \d+\.\d+ \|", out, re.M), (kernel, impl)
    for impl in ("eager", "sdpa"):  # attention per backend; the others need half precision CUDA: rows saying so
        assert re.search(rf"^\| attention \| {impl} \| \d+\.\d+ \|", out, re.M), impl
    for impl in ("cudnn", "flash_attn", "flash_attn3", "xformers"):
        assert f"| attention | {impl} | not run: takes half precision CUDA tensors only |" in out, impl
    assert re.search(r"^\| swiglu mlp \| xformers \| (\d+\.\d+|not run: xformers is not installed) \|", out, re.M)


def test_train_throughput_accelerator_rows_say_why_they_did_not_run():
    out = run("train_throughput.py", "--tiny", "--no-breakdown", "--variants", "lit_gpt kernels+compile flash_attn3")
    assert "not run: lit_gpt kernels+compile flash_attn3 (flash_attn_interface not installed)" in out


def test_train_throughput_budget_skips_rows_and_still_prints_table(tmp_path):
    out = run("train_throughput.py", "--tiny", "--budget", "0", "--variants", "lit_gpt eager", "hf eager",
              "--json", str(tmp_path / "r.json"))
    assert "| lit_gpt eager | 1 | skipped (--budget 0s used) |" in out
    assert "step breakdown skipped: --budget 0s used" in out
    assert '"skipped (--budget 0s used)"' in (tmp_path / "r.json").read_text()


def test_comm_model_prints_the_tables_of_docs_scaling():
    """docs/scaling.md's numbers are benchmarks/comm_model.py's output: every table row it prints is in the doc."""
    out = run("comm_model.py")
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) > 20 and "| TinyLlama-1.1B | 2x8 H100, 100 Gb/s per node | 8 |" in out
    doc = (ROOT / "docs" / "scaling.md").read_text().splitlines()
    assert [r for r in rows if r not in doc] == []


def test_tokens_to_loss_interpolates_between_evaluations_and_tabulates():
    from benchmarks.tokens_to_loss import table, tokens_to

    curve = [(100, 8.0), (200, 6.0), (300, 5.0)]
    assert tokens_to(curve, 8.5) == 100 and tokens_to(curve, 5.5) == 250 and tokens_to(curve, 4.0) is None
    curves = {("adamw", "cosine"): [curve, [(100, 8.0), (200, 6.0), (300, 5.2)]],
              ("muon", "wsd"): [[(100, 7.0), (200, 5.1), (300, 4.9)], [(100, 7.0), (200, 5.5), (300, 5.3)]]}
    text = table(curves, 5.1)
    assert "| adamw+cosine | 1/2 | 290 | 1.00 | 5.1000 (5.0000-5.2000) |" in text
    assert "| muon+wsd | 1/2 | 200 | 0.69 | 5.1000 (4.9000-5.3000) |" in text


@pytest.mark.slow
def test_tokens_to_loss_runs_its_arms_through_the_trainer(tmp_path):
    # the reference arm and the one combining both new options (the other two are the same parts recombined)
    out = run("tokens_to_loss.py", "--steps", "4", "--warmup", "1", "--eval-interval", "2", "--eval-iters", "1",
              "--block-size", "32", "--batch", "2", "--micro-batch", "2", "--seeds", "1", "--work-dir",
              str(tmp_path), "--md", str(tmp_path / "t.md"), "--plot", str(tmp_path / "p.png"),
              "--arms", "adamw+cosine,muon+wsd", timeout=600)
    for arm in ("adamw+cosine", "muon+wsd"):
        assert f"| {arm} | " in out
    assert (tmp_path / "t.md").read_text().strip() in out and (tmp_path / "p.png").stat().st_size > 0


def test_prepare_throughput_prints_a_row_per_tokenizer_and_format():
    out = run("prepare_throughput.py", "--repeat", "1", "--trials", "1", "--workers", "1", "--formats", "parquet",
              "--tokenizer_dir", str(ROOT / "data" / "tokenizer"))
    for name in ("tokenizer alone (1 core), first pass", "tokenizer alone (1 core), second pass",
                 "tokenizer alone (1 core), first pass in a forked process", "pipeline, parquet, 1 worker"):
        assert re.search(rf"^\| tokenizer \(sentencepiece, 4,096\) \| {re.escape(name)} \| [\d,]+ \|", out, re.M), out
    # the tokenizer processes' encoding CPU, recorded through the forked processes, is a share of their CPU
    row = next(line for line in out.splitlines() if "| pipeline, parquet, 1 worker |" in line).split(" | ")
    assert 0.3 < float(row[7]) <= 1.0, row


def test_prose_corpus_from_a_deb_and_a_llama2_style_tokenizer_with_its_tokenizers_twin(tmp_path, monkeypatch):
    """The prose helper reads the docs' sources out of a .deb into documents of whole paragraphs, and the
    `tokenizers` twin of a Llama-2-style sentencepiece model gives its ids, texts opening with a space included."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import prose_corpus

    pytest.importorskip("transformers")
    docs = {"library/a.rst.txt": "Title\n=====\n\n" + "Some prose here.\n\n" * 300, "c-api/b.rst.txt": "C code.\n"}
    doc_deb(tmp_path / "doc.deb", docs)
    rows = prose_corpus.documents(prose_corpus.deb_members(tmp_path / "doc.deb"))
    assert [r["meta"]["redpajama_set_name"] for r in rows] == ["RedPajamaGithub"] + ["RedPajamaBook"] * 3
    assert "".join(r["text"] for r in rows[1:]).count("Some prose here.") == 300
    assert all(len(r["text"]) >= prose_corpus.DOC_CHARS for r in rows[1:-1])

    texts = [f"The quick brown fox number {i} jumps over the lazy dog in year {1900 + i}.\n" for i in range(400)]
    prose_corpus.llama2_sentencepiece(texts, tmp_path / "sp", 360)
    prose_corpus.tokenizers_twin(tmp_path / "sp", tmp_path / "hf")
    probe = ["   indented fox", " fox", "fox  jumps\n\n   over 12345", "naïve façade ✓ 狐狸", ""]
    assert prose_corpus.same_ids(tmp_path / "sp", tmp_path / "hf", texts + probe) > 0
