import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def root() -> Path:
    return ROOT


# Helpers that live as long as the pytest process and stop with it (torch.compile's worker pool).
PYTEST_LIFETIME = ("torch/_inductor/compile_worker",)


def _started_by_this_session(marker: bytes) -> list[str]:
    """'pid cmdline' of the live processes this pytest started: its forked children, and every process whose
    environment holds `marker` (inherited by subprocesses and their children, orphaned or not)."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            ours = int(ppid) == os.getpid() or marker in (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ours and state != "Z" and int(proc.name) != os.getpid() and not any(h in cmdline for h in PYTEST_LIFETIME):
            left.append(f"{proc.name} {cmdline[:200]}")
    return left


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """Fails the suite when a process it started is still alive a few seconds after the last test (and kills it)."""
    if sys.platform != "linux":
        yield
        return
    os.environ["LIT_GPT_TEST_SESSION"] = session = f"{os.getpid()}-{time.time()}"
    yield
    marker = f"LIT_GPT_TEST_SESSION={session}".encode()
    deadline = time.time() + 5
    while (left := _started_by_this_session(marker)) and time.time() < deadline:
        time.sleep(0.2)
    for line in left:
        with contextlib.suppress(OSError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, "processes started by the tests outlived them:\n" + "\n".join(left)


def doc_deb(path: Path, docs: dict) -> Path:
    """A .deb (an `ar` archive with data.tar.xz) holding `docs` ({name: text}) as python3.11-doc's reST sources, as
    benchmarks/prose_corpus.py reads them."""
    import io
    import tarfile

    from benchmarks.prose_corpus import SOURCES

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:xz") as t:
        for name, text in docs.items():
            info = tarfile.TarInfo(f"./{SOURCES}{name}")
            info.size = len(text.encode())
            t.addfile(info, io.BytesIO(text.encode()))
    deb = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.xz", tar.getvalue())):
        deb += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
    path.write_bytes(deb)
    return path
