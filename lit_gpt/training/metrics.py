"""Metric logging of a training run: `out_dir/metrics.csv` always, TensorBoard and W&B when asked; and reading the
CSV back (plots, the demo's summary, tests)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

from lit_gpt.layout import METRICS_CSV
from lit_gpt.utils import TrainError, atomic_write

CSV_COLUMNS = ["step", "tokens", "loss", "val_loss", "val_ppl", "lr", "grad_norm", "tokens_per_s",
               "tokens_per_s_per_device", "mfu", "peak_mem_gib", "eta_s"]


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
