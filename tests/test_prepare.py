import contextlib
import functools
import http.server
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import zstandard

from lit_gpt.data.prepare import Manifest, Stats, pack_with_eos, prepare
from lit_gpt.data.cli import slimpajama_reader
from lit_gpt.data.formats import decompress
from lit_gpt.data.sources import DataError, HttpSource, LocalSource
from lit_gpt.data import packed
from lit_gpt.data.packed import read_chunk, read_header
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import exit_with_parent

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


SLIMPAJAMA = slimpajama_reader()


def run(source, dest, include="train", **kw):
    """The SlimPajama preset's settings (prepare_slimpajama.py), small chunks, one worker unless told."""
    kw = {"chunk_size": 997, "num_workers": 1, "log": lambda *a: None, "prefix": "train_slimpajama",
          "reader": SLIMPAJAMA, **kw}
    return prepare(source, include, TOKENIZER, dest, **kw)


class Handler(http.server.SimpleHTTPRequestHandler):
    fail: dict = {}  # path -> [status, times left]
    damage: dict = {}  # path -> times left to send the file with random bytes in its middle

    def do_GET(self):
        rule = self.fail.get(self.path)
        if rule and rule[1] > 0:
            rule[1] -= 1
            self.send_error(rule[0])
            return
        if self.damage.get(self.path, 0) > 0:
            self.damage[self.path] -= 1
            body = damaged(Path(self.directory, self.path.lstrip("/")).read_bytes())
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(folder: Path):
    """(server, its handler class, its URL) of a server on 127.0.0.1 for `folder`, on a thread."""
    handler = type("H", (Handler,), {"fail": {}, "damage": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(corpus):
    with serving(corpus[0]) as s:
        yield s


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


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_pack_with_eos_equals_appending_eos_to_each_document(dtype):
    ids = [[5, 6, 7], [], [65535 if dtype == np.uint16 else 70000], [1] * 1000, []]
    tokens, lengths = pack_with_eos(ids, 2, dtype)
    assert tokens.dtype == dtype and lengths.tolist() == [len(d) + 1 for d in ids]
    assert tokens.tolist() == [t for d in ids for t in d + [2]]
    tokens, lengths = pack_with_eos([], 2, dtype)
    assert len(tokens) == 0 and len(lengths) == 0


@pytest.mark.skipif(sys.platform != "linux", reason="forked tokenizer processes")
def test_forked_tokenizer_processes_use_the_parents_tokenizer(corpus, tmp_path, monkeypatch):
    """Loaded once in the parent and inherited, not loaded again in each process (~80 ms for a 32k tokenizer.json)."""
    root, rows = corpus
    parent, load = os.getpid(), Tokenizer.__init__

    def parent_only(self, *args, **kwargs):
        if os.getpid() != parent:
            raise RuntimeError("tokenizer loaded again in a tokenizer process")
        load(self, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "__init__", parent_only)
    run(LocalSource(root), tmp_path / "out", num_workers=2, max_files=2)
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows[:20]))


def test_skip_sets_none_and_max_files_and_max_tokens(corpus, tmp_path):
    root, rows = corpus
    run(LocalSource(root), tmp_path / "all", reader=slimpajama_reader(skip_sets=()), max_files=2)
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


@pytest.mark.parametrize("where, n", [("chunk", 3), ("manifest", 5)])
def test_ctrl_c_then_rerun(corpus, tmp_path, monkeypatch, where, n):
    """Ctrl-C before the 3rd chunk write (two chunks on disk, no file recorded yet) or before the 4th file is
    recorded (its chunks on disk): the rerun drops what is not recorded and redoes it."""
    root, rows = corpus
    target = (packed, "write_chunk") if where == "chunk" else (Manifest, "save")
    real, calls = getattr(*target), []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(*target, interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(LocalSource(root), tmp_path / "out")
    monkeypatch.setattr(*target, real)
    done = json.loads((tmp_path / "out" / "train_slimpajama.manifest.json").read_text())["files"]
    assert len(done) == (0 if where == "chunk" else 3) and len(list((tmp_path / "out").glob("*.bin"))) >= 2
    chunk_size = 1000 if where == "chunk" else 997  # a run that recorded nothing binds no option
    stats = run(LocalSource(root), tmp_path / "out", num_workers=2, chunk_size=chunk_size)
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows))
    assert read_header(tmp_path / "out" / "train_slimpajama_0000000000.bin")[1] == chunk_size
    assert stats.files == 6 and sum(stats.docs.values()) == sum(r["meta"]["redpajama_set_name"] != "RedPajamaGithub" for r in rows)


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("platform", ["linux", "other"])
def test_exit_with_parent(monkeypatch, platform):
    """A process that called exit_with_parent dies soon after its parent's kill -9: by the parent-death signal on
    Linux, by the os.getppid() watch elsewhere."""
    monkeypatch.setattr(sys, "platform", platform)
    read, write = os.pipe()
    parent = os.fork()
    if parent == 0:  # starts a child that watches it, says the child's id, waits to be killed
        me = os.getpid()
        child = os.fork()
        if child == 0:
            exit_with_parent(me, poll_s=0.05)
            time.sleep(30)
            os._exit(0)
        os.write(write, b"%d" % child)
        time.sleep(30)
        os._exit(0)
    child = int(os.read(read, 32))
    os.close(read)
    os.close(write)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    deadline = time.time() + 3
    while alive(child) and time.time() < deadline:
        time.sleep(0.02)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail("the child outlived its parent")


# Runs the script, SIGKILLing itself at the n-th atomic rename into a file whose name ends with `suffix`, just
# before or just after it (a chunk or manifest fully written but not yet in place, or in place), after printing the
# ids of its tokenizer processes.
KILL_AT = """
import multiprocessing, os, runpy, signal, sys
suffix, n, when, script = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
real, seen = os.replace, []
def die():
    print("workers:", *[p.pid for p in multiprocessing.active_children()], file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst):
    seen.append(str(dst).endswith(suffix))
    last = seen[-1] and seen.count(True) == n
    if last and when == "before":
        die()
    real(src, dst)
    if last and when == "after":
        die()
os.replace = replace
sys.argv = sys.argv[4:]
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_at_any_moment_then_rerun_gives_identical_output(corpus, server, tmp_path):
    """kill -9 right after the first chunk landed (before any file is recorded), with the 3rd file's manifest entry
    written but not renamed, and mid-file with a partial chunk to reload: each rerun continues, the result equals an
    uninterrupted run byte for byte, and the killed run's tokenizer processes die with it."""
    root, rows = corpus
    run(LocalSource(root), tmp_path / "reference")
    args = [str(SCRIPT), "--stream", "--base_url", server[2], "--destination", str(tmp_path / "out"), "--tokenizer_dir",
            str(TOKENIZER), "--chunk_size", "997", "--num_workers", "2"]
    manifest = tmp_path / "out" / "train_slimpajama.manifest.json"
    for suffix, n, when, files_done in [(".bin", 1, "after", 0), (".json", 4, "before", 2), (".bin", 4, "after", 2)]:
        with open(tmp_path / "stderr", "w+") as stderr:  # a file, not a pipe: orphans holding it open don't block
            code = subprocess.call([sys.executable, "-c", KILL_AT, suffix, str(n), when, *args], timeout=300,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
            stderr.seek(0)
            err = stderr.read()
        assert code == -signal.SIGKILL, err
        assert len(json.loads(manifest.read_text())["files"]) == files_done
        workers = [int(pid) for pid in re.search(r"workers:(.*)", err)[1].split()]
        assert len(workers) == 2
        deadline = time.time() + 5
        while time.time() < deadline and any(map(alive, workers)):
            time.sleep(0.05)
        assert not any(map(alive, workers)), "workers outlived their parent"
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 done before" in result.stdout
    assert output(tmp_path / "out")[1] == output(tmp_path / "reference")[1]
    assert not list((tmp_path / "out").glob(".*tmp*"))


def damaged(raw: bytes) -> bytes:
    """`raw` with 64 random bytes in its middle."""
    middle = len(raw) // 2
    return raw[:middle] + np.random.default_rng(0).bytes(64) + raw[middle + 64 :]


def test_decompress_tells_corrupt_from_truncated():
    frames = [zstandard.ZstdCompressor().compress(b'{"text": "%d"}\n' % i) for i in range(3)]
    assert decompress("a.jsonl.zst", b"".join(frames)) == (b"".join(b'{"text": "%d"}\n' % i for i in range(3)), None)
    bad = damaged(zstandard.ZstdCompressor().compress(b"".join(b'{"text": "%d"}\n' % i for i in range(200))))
    data, damage = decompress("a.jsonl.zst", frames[0] + bad + frames[2])  # nothing kept from the bad frame on
    assert data == b'{"text": "0"}\n' and damage.startswith(f"corrupt: {len(bad + frames[2]):,} of ")
    assert decompress("a.jsonl.zst", b"plain text\n")[1].startswith("corrupt: 11 of 11 compressed bytes unreadable")
    assert decompress("a.jsonl.zst", frames[0] + frames[1][:-3])[1].startswith("truncated: ends inside a zstd frame")


def test_bad_rows_and_damaged_files_are_reported_and_fail_the_run(tmp_path, capsys):
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
    (root / "train/chunk1/example_train_4.jsonl.zst").write_text('{"text": "not compressed"}\n')
    (root / "train/chunk1/example_train_5.jsonl.zst").write_bytes(damaged(raw))
    args = ("--source_path", root, "--destination", tmp_path / "out", "--tokenizer_dir", TOKENIZER, "--num_workers", 1)
    lost = "error: data lost from 3 damaged source files: train/chunk1/example_train_2.jsonl.zst, " \
           "train/chunk1/example_train_4.jsonl.zst, train/chunk1/example_train_5.jsonl.zst"
    assert cli(*args) == lost  # exit status 1, after every file was done
    report = capsys.readouterr().out
    stats = Stats.from_json(json.loads((tmp_path / "out/train_slimpajama.manifest.json").read_text())["stats"])
    assert stats.files == 6
    assert stats.malformed == {"malformed JSON": 1, "no text field": 2, "invalid UTF-8": 1}
    assert stats.examples["invalid UTF-8"] == ["train/chunk1/example_train_0.jsonl.zst:5"]
    assert stats.empty_files == ["train/chunk1/example_train_1.jsonl.zst"]
    kept_big = stats.docs["unknown"]
    assert 0 < kept_big < 40  # the complete rows before the cut
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(good[:2] + big[:kept_big] + good[2:]))
    assert "malformed rows (invalid UTF-8): 1, e.g. train/chunk1/example_train_0.jsonl.zst:5" in report
    assert "LOST data of train/chunk1/example_train_2.jsonl.zst: truncated: ends inside a zstd frame" in report
    assert "LOST data of train/chunk1/example_train_4.jsonl.zst: corrupt: 27 of 27 compressed bytes" in report
    assert f"LOST data of train/chunk1/example_train_5.jsonl.zst: corrupt: {len(raw):,} of {len(raw):,}" in report
    assert "empty files" in report and "RedPajamaC4" in report
    assert cli(*args) == lost  # the rerun has nothing to do, and still says what the data set lacks


def test_zero_tokens_is_an_error_and_leaves_the_destination_empty(tmp_path):
    root = tmp_path / "src"
    (root / "train").mkdir(parents=True)
    (root / "train/example_train_0.jsonl.zst").write_bytes(b"\x00" * 100)
    args = ("--source_path", root, "--destination", tmp_path / "out", "--tokenizer_dir", TOKENIZER, "--num_workers", 1)
    for _ in range(2):  # nothing is recorded: the rerun tries again
        message = cli(*args)
        assert message.endswith("train: no tokens to write from 1 files (1 damaged, 0 empty, 0 documents skipped, "
                                "0 filtered out, 0 malformed rows)")
        assert not list((tmp_path / "out").iterdir())


def test_stream_downloads_a_damaged_file_again(corpus, server, tmp_path):
    root, rows = corpus
    _, handler, url = server
    handler.damage["/train/chunk2/example_train_1.jsonl.zst"] = 1  # one bad transfer, then the good file
    logs = []
    stats = run(HttpSource(url), tmp_path / "once", log=logs.append)
    assert np.array_equal(output(tmp_path / "once")[0], expected_tokens(rows)) and not stats.damaged_files
    assert any("example_train_1.jsonl.zst: corrupt" in line and "downloading it again" in line for line in logs)
    handler.damage["/train/chunk2/example_train_1.jsonl.zst"] = 2  # damaged on the server: lost, the rest kept
    stats = run(HttpSource(url), tmp_path / "twice")
    assert list(stats.damaged_files) == ["train/chunk2/example_train_1.jsonl.zst"]
    assert np.array_equal(output(tmp_path / "twice")[0], expected_tokens(rows[:21] + rows[35:]))


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


def cli(*args, script: Path = SCRIPT) -> str:
    """The script's error for these arguments: a non-zero exit with one line (sys.exit prints it, no traceback)."""
    main = runpy.run_path(str(script))["main"]
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
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


def lfs(path: Path) -> dict:
    """The tree API's "lfs" entry of a file the Hub keeps in LFS (parquet, compressed JSON lines): its sha256."""
    if not path.name.endswith((".parquet", ".zst", ".gz")):
        return {}
    import hashlib

    return {"lfs": {"oid": hashlib.sha256(path.read_bytes()).hexdigest(), "size": path.stat().st_size,
                    "pointerSize": 134}}


def hub_handler(handler, root: Path, repo: str, seen: list):
    """`handler` serving `root` where the Hub would: the tree API at /api/datasets/{repo}/tree/{revision}/{path}
    (recursive JSON listing, with each LFS file's sha256) and the files at /datasets/{repo}/resolve/{revision}/{file}."""

    class Hub(handler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
            tree = f"/api/datasets/{repo}/tree/main"
            if path.startswith(tree):
                folder = root / path[len(tree):].strip("/")
                entries = [{"type": "file", "path": p.relative_to(root).as_posix(), "size": p.stat().st_size,
                            "oid": "0" * 40, **lfs(p)} for p in sorted(folder.rglob("*")) if p.is_file()]
                entries += [{"type": "directory", "path": p.relative_to(root).as_posix(), "oid": "0" * 40}
                            for p in sorted(folder.rglob("*")) if p.is_dir()]
                body = json.dumps(entries).encode() if folder.is_dir() else b"{}"
                self.send_response(200 if folder.is_dir() else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.path = self.path.removeprefix(f"/datasets/{repo}/resolve/main")
            super().do_GET()

    return functools.partial(Hub, directory=str(root))


def test_hugging_face_source_urls_token_and_listing(corpus, server, tmp_path, monkeypatch):
    from lit_gpt.data.sources import HuggingFaceSource

    root, rows = corpus
    _, handler, url = server
    seen = []
    server[0].RequestHandlerClass = hub_handler(handler, root, "cerebras/SlimPajama-627B", seen)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    run(HuggingFaceSource("cerebras/SlimPajama-627B", endpoint=url), tmp_path / "out")
    assert np.array_equal(output(tmp_path / "out")[0], expected_tokens(rows))
    downloads = [p for p, _ in seen if "/resolve/" in p]
    assert len(downloads) == 6 and all(auth == "Bearer hf_test_token" for _, auth in seen)
    assert not list((tmp_path / "out").glob(".*downloads*"))  # the downloaded files go once read
