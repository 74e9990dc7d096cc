"""The on-disk layout of a training run: the only module that spells its folder and file names.

    out_dir/
      .lock              held by the run writing here (a second run is refused)
      model_config.json  tokenizer files  metrics.csv  tensorboard/
      checkpoints/
        step-00001000/          one per save; written as step-00001000.tmp/ and renamed once complete
          state.pth             one process or DDP: model, optimizer, step, loader positions, RNG (torch.save)
          state/                FSDP: the same as a sharded torch.distributed.checkpoint folder (+ meta.pt)
          model_config.json
          checksums.json        size and hash of every file above, verified at every read
          eval_results.json     lm-eval scores of this step (scripts/eval.py or --lm_eval_interval)
          lm_eval.log           the output of lm-eval run during training

A lit checkpoint folder (consolidate / convert output) holds lit_model.pth, model_config.json, the tokenizer files,
train_metadata.json ({"step", "tokens_seen"}) and checksums.json.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from lit_gpt.utils import first_line

PathLike = Union[str, Path]

CHECKPOINTS = "checkpoints"
SINGLE_STATE = "state.pth"
SHARDED_STATE = "state"
SHARDED_META = "meta.pt"  # the non-tensor entries of a sharded state, as Fabric writes them
DCP_METADATA = ".metadata"
MODEL_CONFIG = "model_config.json"
LIT_WEIGHTS = "lit_model.pth"
TRAIN_METADATA = "train_metadata.json"
EVAL_RESULTS = "eval_results.json"
LM_EVAL_LOG = "lm_eval.log"  # the output of lm-eval run during training, beside its eval_results.json
METRICS_CSV = "metrics.csv"
LOCK_FILE = ".lock"  # held (flock) by the run writing to out_dir
CHECKSUMS = "checksums.json"  # size and hash of every file of a checkpoint folder (lit_gpt.integrity)
_STEP_DIR = re.compile(r"step-(\d+)$")


def step_dir(out_dir: PathLike, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step-{step:08d}"


def step_of(folder: PathLike) -> Optional[int]:
    """The step of a step folder's name (`step-00001000` -> 1000), None for any other name."""
    match = _STEP_DIR.match(Path(folder).name)
    return int(match.group(1)) if match else None


def step_dirs(folder: PathLike) -> list[Path]:
    """The complete step folders in `folder` (a run's out_dir or its checkpoints/ folder), oldest first;
    unfinished `.tmp` folders are not step folders."""
    folder = Path(folder)
    if (folder / CHECKPOINTS).is_dir():
        folder = folder / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of)


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The newest complete step folder of a run, or None."""
    return (step_dirs(out_dir) or [None])[-1]


def prune_checkpoints(out_dir: PathLike, keep_last_k: Optional[int]) -> None:
    """Deletes all but the newest `keep_last_k` step folders (None keeps all)."""
    if keep_last_k is None:
        return
    dirs = step_dirs(out_dir)
    for old in dirs[:-keep_last_k] if keep_last_k > 0 else dirs:
        shutil.rmtree(old, ignore_errors=True)


def run_dir(folder: PathLike) -> Path:
    """The training out_dir a step folder belongs to (`out/run/checkpoints/step-*` -> `out/run`), else its parent."""
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == CHECKPOINTS else folder.parent


def state_path(folder: PathLike, sharded: bool) -> Path:
    """Where a step folder keeps its training state: `state/` when sharded (FSDP), `state.pth` otherwise."""
    return Path(folder) / (SHARDED_STATE if sharded else SINGLE_STATE)


def is_sharded(folder: PathLike) -> bool:
    return (Path(folder) / SHARDED_STATE).is_dir()


def step_folder(path: PathLike) -> Path:
    """The step folder of a path to a state inside one (`.../state.pth` or `.../state`); other paths unchanged."""
    path = Path(path)
    return path.parent if path.name in (SINGLE_STATE, SHARDED_STATE) else path


def metadata_file(folder: PathLike) -> Path:
    """The file that holds a step folder's non-tensor entries: `state/meta.pt` when sharded, else `state.pth`."""
    folder = Path(folder)
    return folder / SHARDED_STATE / SHARDED_META if is_sharded(folder) else folder / SINGLE_STATE


def read_step_metadata(folder: PathLike, keys: tuple[str, ...] = ("step", "tokens_seen", "model_config",
                                                                   "world_size")) -> dict[str, Any]:
    """The non-tensor entries of a step folder's state (step, tokens_seen, ...) without loading the weights.
    Raises ValueError naming the file when it cannot be read."""
    import torch

    file = metadata_file(folder)
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=file.name == SINGLE_STATE)
    except Exception as e:
        raise ValueError(f"{file}: unreadable checkpoint ({first_line(e)})") from None
    return {k: v for k, v in obj.items() if k in keys}


def read_training_metadata(folder: PathLike) -> dict[str, Any]:
    """{"step", "tokens_seen"} (whichever are known) of the checkpoint in `folder`: a lit folder's
    train_metadata.json or a step folder's state; {} when nothing says (an unreadable side file only costs the
    model card its training line)."""
    folder = Path(folder)
    try:
        if (folder / TRAIN_METADATA).is_file():
            obj = json.loads((folder / TRAIN_METADATA).read_text())
        elif metadata_file(folder).is_file():
            obj = read_step_metadata(folder, keys=("step", "tokens_seen"))
        else:
            return {}
    except (ValueError, OSError):
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: int(obj[k]) for k in ("step", "tokens_seen") if isinstance(obj.get(k), int)}


def load_results(path: PathLike) -> dict[str, Any]:
    """Reads an `eval_results.json` written by `lit_gpt.evaluate.evaluate_checkpoint` (ValueError naming the file if
    it is not one)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
        raise ValueError(f"{path}: not an eval_results.json written by scripts/eval.py (no 'summary')")
    return report
