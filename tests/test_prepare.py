import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard

from lit_gpt.data.prepare import Manifest, prepare
from lit_gpt.data.sources import DataError, HttpSource, LocalSource
from lit_gpt.packed_dataset import read_chunk, read_header
from lit_gpt.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data" / "tokenizer"
SAMPLE = ROOT / "data" / "sample_slimpajama"
SCRIPT = ROOT / "scripts" / "prepare_slimpajama.py"


def read_rows(path: Path) -> list[dict]:
    text = zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode()
    return [json.loads(line) for line in text.splitlines()]


def write_rows(path: Path, rows: list, raw_lines: tuple = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r).encode() for r in rows] + list(raw_lines)
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A SlimPajama-layout tree from the sample's held-out documents: 6 train files over 2 chunks (sorted
    naturally: example_train_10 after _2), a Github row to skip, a one-row file and a file holding 3 frames."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [r for split in ("validation", "test") for f in sorted(SAMPLE.glob(f"{split}/chunk1/*.zst")) for r in read_rows(f)]
    files = {
        "train/chunk1/example_train_2.jsonl.zst": rows[0:12],
        "train/chunk1/example_train_10.jsonl.zst": rows[12:20],
        "train/chunk2/example_train_0.jsonl.zst": rows[20:21],
        "train/chunk2/example_train_1.jsonl.zst": rows[21:35],
        "train/chunk10/example_train_0.jsonl.zst": rows[35:45],
        "train/chunk10/example_train_1.jsonl.zst": rows[45:],
    }
    for name, part in files.items():
        write_rows(root / name, part)
    multi = root / "train/chunk10/example_train_1.jsonl.zst"
    frames = [zstandard.ZstdCompressor().compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows[45:][i::3]))
              for i in range(3)]
    multi.write_bytes(b"".join(frames))
    files["train/chunk10/example_train_1.jsonl.zst"] = [r for i in range(3) for r in rows[45:][i::3]]
    order = ["train/chunk1/example_train_2.jsonl.zst", "train/chunk1/example_train_10.jsonl.zst",
             "train/chunk2/example_train_0.jsonl.zst", "train/chunk2/example_train_1.jsonl.zst",
             "train/chunk10/example_train_0.jsonl.zst", "train/chunk10/example_train_1.jsonl.zst"]
    return root, [r for name in order for r in files[name]]


def expected_tokens(rows, skip=("RedPajamaGithub",)) -> np.ndarray:
    """Independent reference: each kept document in order, tokenized without BOS, EOS appended."""
    tok = Tokenizer(TOKENIZER)
    ids = [tok.encode(r["text"], eos=True) for r in rows if r["meta"].get("redpajama_set_name") not in skip]
    return np.concatenate([np.array(i, dtype=np.int64) for i in ids])


def output(folder: Path, prefix: str = "train_slimpajama") -> tuple[np.ndarray, dict]:
    files = sorted(folder.glob(f"{prefix}_*.bin"))
    return np.concatenate([read_chunk(f) for f in files]).astype(np.int64), {f.name: f.read_bytes() for f in files}


def run(source, dest, **kw):
    kw = {"chunk_size": 997, "num_workers": 1, "log": lambda *a: None, **kw}
    return prepare(source, "train", TOKENIZER, dest, **kw)


class Handler(http.server.SimpleHTTPRequestHandler):
    fail: dict = {}  # path -> [status, times left]
    delay = 0.0

    def do_GET(self):
        time.sleep(self.delay if self.path.endswith(".zst") else 0)
        rule = self.fail.get(self.path)
        if rule and rule[1] > 0:
            rule[1] -= 1
            self.send_error(rule[0])
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(corpus):
    handler = type("H", (Handler,), {"fail": {}, "delay": 0.0})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(corpus[0])))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_every_document_once_same_for_1_and_2_workers_and_stream(corpus, server, tmp_path):
    root, rows = corpus
    stats = run(LocalSource(root), tmp_path / "one")
    tokens, files_one = output(tmp_path / "one")
    assert np.array_equal(tokens, expected_tokens(rows))
    assert len(files_one) > 20
    headers = [read_header(tmp_path / "one" / n)[1] for n in sorted(files_one)]
    assert headers[:-1] == [997] * (len(headers) - 1) and 0 < headers[-1] < 997  # true final length, no padding
    github = sum(r["meta"]["redpajama_set_name"] == "RedPajamaGithub" for r in rows)
    assert github and stats.skipped == {"RedPajamaGithub": github}
    assert sum(stats.docs.values()) == len(rows) - github and sum(stats.tokens.values()) == len(tokens)

    run(LocalSource(root), tmp_path / "two", num_workers=2)
    assert output(tmp_path / "two")[1] == files_one
    _, _, url = server
    run(HttpSource(url), tmp_path / "http", num_workers=2, download_workers=2)
    assert output(tmp_path / "http")[1] == files_one


def test_skip_sets_none_and_max_files_and_max_tokens(corpus, tmp_path):
    root, rows = corpus
    run(LocalSource(root), tmp_path / "all", skip_sets=(), max_files=2)
    assert np.array_equal(output(tmp_path / "all")[0], expected_tokens(rows[:20], skip=()))
    stats = run(LocalSource(root), tmp_path / "max", max_tokens=5000)
    tokens = output(tmp_path / "max")[0]
    reference = expected_tokens(rows)
    assert 5000 <= len(tokens) < 5000 + 4000 and np.array_equal(tokens, reference[: len(tokens)])
    assert tokens[-1] == 2 and sum(stats.tokens.values()) == len(tokens)  # whole documents only
    before = output(tmp_path / "max")[1]
    run(LocalSource(root), tmp_path / "max", max_tokens=5000)  # complete: nothing to do
    assert output(tmp_path / "max")[1] == before
    with pytest.raises(DataError, match="previous run used max_tokens=5000"):
        run(LocalSource(root), tmp_path / "max", max_tokens=6000)


def test_crash_between_chunks_and_manifest_then_rerun(corpus, tmp_path, monkeypatch):
    """Chunks of the next file are on disk but its manifest entry is not: the rerun must drop and redo them."""
    root, rows = corpus
    real_save, calls = Manifest.save, []

    def crashing_save(self):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_save(self)

    monkeypatch.setattr(Manifest, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run(LocalSource(root), tmp_path / "out")
    monkeypatch.setattr(Manifest, "save", real_save)
    assert len(json.loads((tmp_path / "out" / "train_slimpajama.manifest.json").read_text())["files"]) == 3
    stats = run(LocalSource(root), tmp_path / "out", num_workers=2)
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows))
    assert stats.files == 6 and sum(stats.docs.values()) == sum(r["meta"]["redpajama_set_name"] != "RedPajamaGithub" for r in rows)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_identical_output(corpus, server, tmp_path):
    root, rows = corpus
    run(LocalSource(root), tmp_path / "reference")
    httpd, handler, url = server
    handler.delay = 0.4  # each file takes a while to "download": room to kill mid-run
    cmd = [sys.executable, str(SCRIPT), "--stream", "--base_url", url, "--destination", str(tmp_path / "out"),
           "--tokenizer_dir", str(TOKENIZER), "--chunk_size", "997", "--num_workers", "1", "--download_workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = tmp_path / "out" / "train_slimpajama.manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["files"]) >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(manifest.read_text())
    assert 2 <= len(done["files"]) < 6 and not done["complete"], "the kill must land mid-run"
    handler.delay = 0.0
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{len(done['files'])} done before" in result.stdout
    assert output(tmp_path / "out")[1] == output(tmp_path / "reference")[1]
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_bad_rows_and_files_are_counted_never_silently_lost(tmp_path):
    good = [{"text": f"document number {i} about tokens", "meta": {"redpajama_set_name": "RedPajamaC4"}} for i in range(6)]
    root = tmp_path / "src"
    write_rows(root / "train/chunk1/example_train_0.jsonl.zst", good[:2],
               raw_lines=(b'{"text": "broken', b'{"meta": {}}', b'{"text": "caf\xe9 latin-1"}', b'[1, 2]'))
    (root / "train/chunk1/example_train_1.jsonl.zst").write_bytes(b"")
    big = [{"text": r["text"], "meta": {}} for r in read_rows(SAMPLE / "train/chunk2/example_train_2.jsonl.zst")[:40]]
    write_rows(root / "train/chunk1/example_train_2.jsonl.zst", big)
    raw = (root / "train/chunk1/example_train_2.jsonl.zst").read_bytes()
    (root / "train/chunk1/example_train_2.jsonl.zst").write_bytes(raw[:-500])  # truncated .zst
    write_rows(root / "train/chunk1/example_train_3.jsonl.zst", good[2:])
    logs = []
    stats = run(LocalSource(root), tmp_path / "out", log=logs.append)
    assert stats.malformed == {"malformed JSON": 1, "no text field": 2, "invalid UTF-8": 1}
    assert stats.examples["invalid UTF-8"] == ["train/chunk1/example_train_0.jsonl.zst:5"]
    assert stats.empty_files == ["train/chunk1/example_train_1.jsonl.zst"]
    assert stats.truncated_files == ["train/chunk1/example_train_2.jsonl.zst"]
    kept_big = stats.docs["unknown"]
    assert 0 < kept_big < 40  # the complete rows before the cut
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(good[:2] + big[:kept_big] + good[2:]))
    report = "\n".join(logs)
    assert "malformed rows (invalid UTF-8): 1, e.g. train/chunk1/example_train_0.jsonl.zst:5" in report
    assert "truncated files" in report and "empty files" in report and "RedPajamaC4" in report


def test_http_errors_are_retried_then_reported_and_the_rerun_finishes(corpus, server, tmp_path):
    root, rows = corpus
    httpd, handler, url = server
    handler.fail["/train/chunk1/example_train_10.jsonl.zst"] = [500, 2]  # transient: two failures then fine
    run(HttpSource(url, retries=3, backoff=0.01), tmp_path / "transient", num_workers=2)
    assert np.array_equal(output(tmp_path / "transient")[0], expected_tokens(rows))

    handler.fail["/train/chunk2/example_train_1.jsonl.zst"] = [404, 99]
    with pytest.raises(DataError, match=r"example_train_1.jsonl.zst: HTTP 404 Not Found after 3 attempts"):
        run(HttpSource(url, retries=2, backoff=0.01), tmp_path / "out")
    assert len(json.loads((tmp_path / "out/train_slimpajama.manifest.json").read_text())["files"]) == 3
    handler.fail.clear()
    run(HttpSource(url, retries=2, backoff=0.01), tmp_path / "out")
    assert output(tmp_path / "out")[1] == output(tmp_path / "transient")[1]


def test_file_list_listing(corpus, server, tmp_path):
    root, rows = corpus
    _, _, url = server
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(sorted(f"./{p.relative_to(root)}" for p in root.rglob("*.zst"))))
    run(HttpSource(url, file_list=str(listing)), tmp_path / "out")
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows))


def cli(*args) -> str:
    """The script's error for these arguments: a non-zero exit with one line (sys.exit prints it, no traceback)."""
    sys.path.insert(0, str(SCRIPT.parent))
    import prepare_slimpajama

    with pytest.raises(SystemExit) as exit_info:
        prepare_slimpajama.main([*map(str, args)])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    return message


def test_cli_one_line_errors(corpus, tmp_path):
    root, _ = corpus
    assert "nope/train: no such folder" in cli("--source_path", tmp_path / "nope", "--destination", tmp_path / "o1")
    assert not (tmp_path / "o1").exists()
    assert "tok: tokenizer not found" in cli("--source_path", root, "--destination", tmp_path / "o2",
                                             "--tokenizer_dir", tmp_path / "tok")
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "train_slimpajama_0000000000.bin").write_bytes(b"x")
    assert "no train_slimpajama.manifest.json" in cli("--source_path", root, "--destination", tmp_path / "o3")
    assert "either --source_path or --stream" in cli("--destination", tmp_path / "o4")


def test_hugging_face_source_urls_token_and_listing(corpus, server, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from lit_gpt.data.sources import HuggingFaceSource

    root, rows = corpus
    _, handler, url = server
    seen = []

    class Mapped(handler):  # serve the tree where the Hub would: /datasets/{repo}/resolve/{revision}/{file}
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.path = self.path.removeprefix("/datasets/cerebras/SlimPajama-627B/resolve/main")
            super().do_GET()

    server[0].RequestHandlerClass = functools.partial(Mapped, directory=str(root))
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*.zst")) + ["README.md", "validation/x.jsonl.zst"]
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kw: names)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    run(HuggingFaceSource("cerebras/SlimPajama-627B", endpoint=url), tmp_path / "out")
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows))
    assert len(seen) == 6 and all(auth == "Bearer hf_test_token" for _, auth in seen)
