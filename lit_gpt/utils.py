"""Small shared helpers: durable writes (fsync, atomic file and folder replacement), one-line error text, the
expected-error type of training, durations."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator, Union


class TrainError(Exception):
    """An expected problem with the user's input or environment, reported as one line without a traceback."""


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h >= 24:
        return f"{h // 24}d{h % 24:02d}h"
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Ends this (child) process when `parent_pid` dies, even by SIGKILL, so that no worker is left orphaned: a
    parent-death signal on Linux, else a daemon thread that polls os.getppid() (an orphan gets a new parent)."""
    if sys.platform == "linux":
        PR_SET_PDEATHSIG = 1
        if ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0:
            if os.getppid() != parent_pid:  # the parent died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def write_json(path: Union[str, Path], obj) -> None:
    """`obj` as indented JSON with a final newline (inside a folder that is renamed into place when complete)."""
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


def fsync(path: Union[str, Path]) -> None:
    """fsync one file or folder (a folder's fsync makes a rename or a new entry in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under `path`, and `path` itself."""
    for root, _, files in os.walk(path):
        for name in files:
            fsync(Path(root) / name)
        fsync(root)


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Opens a hidden temp file `.<name>.tmp-<pid>` next to `path` for writing; on success it is fsynced and renamed
    over `path` (readers see the old file or the new one, never half of one), on any error it is deleted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_folder(tmp: Path, final: Path) -> None:
    """Publishes the filled folder `tmp` as `final` durably: fsync its tree, move an existing `final` aside (so one
    complete copy exists at every moment), rename, fsync the parent, then delete the old copy."""
    fsync_tree(tmp)
    old = final.with_name(f"{final.name}.old-{os.getpid()}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync(final.parent)
    shutil.rmtree(old, ignore_errors=True)

