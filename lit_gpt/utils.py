"""Small shared helpers: durable writes (fsync, atomic file and folder replacement), one-line error text, and for
the training loop the expected-error type and metric logging (CSV, TensorBoard, W&B)."""

from __future__ import annotations

import contextlib
import csv
import ctypes
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

METRICS_CSV = "metrics.csv"
CSV_COLUMNS = ["step", "tokens", "loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s",
               "tokens_per_s_per_device", "mfu", "peak_mem_gib", "eta_s"]


class TrainError(Exception):
    """An expected problem with the user's input or environment, reported as one line without a traceback."""


class MetricsLogger:
    """Rank-0 metrics sink: `out_dir/metrics.csv` always, TensorBoard (`out_dir/tensorboard/`) and W&B when asked.

    On a resume the CSV keeps only the rows up to the resumed step (steps after the last checkpoint were lost with
    the crash and get logged again), so the file reads as one uninterrupted run. Floats are written with repr, exact.
    A metric name not among the columns yet (e.g. `lm_eval/<task>`) adds a column: the file is rewritten once.
    """

    def __init__(self, out_dir: Path, loggers: list[str], hparams: dict[str, Any], resume_step: int = 0,
                 wandb_project: str = "lit_gpt") -> None:
        check_loggers(loggers)
        self.path = Path(out_dir) / METRICS_CSV
        self.columns = list(CSV_COLUMNS)
        self._truncate(resume_step)
        self._open()
        self.tb = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step
                                    else None)
        self.wandb = None
        if "wandb" in loggers:
            import wandb

            self.wandb = wandb.init(project=wandb_project, dir=str(out_dir), config=hparams, resume="allow",
                                    id=_wandb_id(out_dir))

    def _open(self) -> None:
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.columns)
        if new:
            self.writer.writeheader()

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if int(r["step"]) <= resume_step]
            self.columns += [c for c in reader.fieldnames or [] if c not in self.columns]
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        with atomic_write(self.path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, metrics: dict[str, Any]) -> None:
        added = [k for k in metrics if k not in self.columns]
        if added:  # a metric not seen before (e.g. lm_eval/<task>): widen the header, keeping the rows
            self.file.close()
            with open(self.path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += added
            self._rewrite(rows)
            self._open()
        self.writer.writerow({k: ("" if metrics.get(k) is None else repr(metrics[k])) for k in self.columns})
        self.file.flush()
        step = metrics["step"]
        values = {k: v for k, v in metrics.items() if k != "step" and isinstance(v, (int, float))
                  and not (isinstance(v, float) and math.isnan(v))}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def check_loggers(loggers: list[str]) -> None:
    """Fails early (before any process waits on another) on an unknown logger or a missing wandb package."""
    unknown = set(loggers) - {"tensorboard", "wandb", "csv"}
    if unknown:
        raise TrainError(f"unknown logger(s) {sorted(unknown)}: choose from tensorboard, wandb (csv is always on)")
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrainError("the wandb logger needs `pip install wandb`") from None


def _wandb_id(out_dir: Path) -> str:
    """A run id stored in out_dir so a resumed run continues the same W&B run."""
    path = Path(out_dir) / "wandb_run_id.txt"
    if not path.exists():
        import uuid

        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def read_metrics(path: Path) -> list[dict[str, Optional[float]]]:
    """Rows of a metrics.csv as floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


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

