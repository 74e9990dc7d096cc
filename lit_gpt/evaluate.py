"""lm-eval on a lit checkpoint or a Hugging Face folder, reported the way the seed tables report it.

The seed tables (TinyLlama, MicroLlama) give, per task, acc_norm where the task has it and acc for WinoGrande and
BoolQ, in percent, followed by their average:

    | Model | HellaSwag | Obqa | WinoGrande | ARC_c | ARC_e | boolq | piqa | avg |

A lit checkpoint is converted to a temporary Hugging Face folder (`lit_gpt.convert.save_hf_folder`) and scored by
lm-eval's own `hf` model, so the numbers are exactly what `lm_eval --model hf` gives on the converted model.
`evaluate_checkpoint` is the one entry point, shared by scripts/eval.py and by the trainer's periodic evaluation.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from lit_gpt.layout import EVAL_RESULTS, PathLike, read_training_metadata, run_dir, step_of
from lit_gpt.utils import atomic_write


DEFAULT_TASKS = ("hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "piqa")
# column titles and order of the seed tables
SEED_COLUMNS = {"hellaswag": "HellaSwag", "openbookqa": "Obqa", "winogrande": "WinoGrande", "arc_challenge": "ARC_c",
                "arc_easy": "ARC_e", "boolq": "boolq", "piqa": "piqa"}
ACC_ONLY_TASKS = {"winogrande", "boolq"}  # the tables report acc for these even if acc_norm were present


# ---- argument checks -------------------------------------------------------------------------------
def check_limit(limit: Optional[float]) -> None:
    """lm-eval reads an int limit as a number of examples per task and a float < 1 as a fraction of each task."""
    if limit is None:
        return
    if limit <= 0 or (isinstance(limit, float) and limit > 1 and not limit.is_integer()):
        raise ValueError(f"--limit must be a number of examples >= 1 or a fraction in (0, 1], got {limit}")


def task_manager(include_path: Optional[Sequence[PathLike]] = None):
    """lm-eval's TaskManager with the extra task folders; cached per folder list because indexing every task YAML
    takes seconds and the trainer evaluates again every few thousand steps."""
    paths = tuple(str(Path(p).resolve()) for p in include_path or ())
    for p in paths:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"{p}: --include_path folder not found")
    return _task_manager(paths)


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None)


def check_tasks(tasks: Sequence[str], manager) -> None:
    """Raises a one-line ValueError naming every task lm-eval does not know (before any model is loaded)."""
    if not tasks:
        raise ValueError("no tasks given")
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"unknown task(s): {', '.join(unknown)} (list the known ones with `lm-eval ls tasks`; "
                         "add local task folders with --include_path)")


# ---- reporting -------------------------------------------------------------------------------------
def headline_metric(task: str, metrics: dict[str, Any]) -> Optional[tuple[str, float, Optional[float]]]:
    """(metric name, value, stderr) in the seed tables' convention, or None when the entry has neither acc nor
    acc_norm (e.g. a generation task)."""
    order = ("acc",) if task in ACC_ONLY_TASKS else ("acc_norm", "acc")
    for name in order:
        key = next((k for k in metrics if k.split(",")[0] == name), None)
        if key is not None and isinstance(metrics[key], (int, float)):
            filt = key.split(",", 1)[1] if "," in key else None
            stderr = metrics.get(f"{name}_stderr,{filt}" if filt else f"{name}_stderr")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None
            return name, float(metrics[key]), stderr
    return None


def summarize(lm_eval_results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """task -> {"metric", "value", "stderr"} for every task in an lm-eval results dict that reports accuracy;
    seed-table tasks first in the tables' order, then the others in lm-eval's order."""
    results = lm_eval_results["results"]
    names = [t for t in SEED_COLUMNS if t in results] + [t for t in results if t not in SEED_COLUMNS]
    out = {}
    for task in names:
        picked = headline_metric(task, results[task])
        if picked is not None:
            out[task] = {"metric": picked[0], "value": picked[1], "stderr": picked[2]}
    return out


def average(summary: dict[str, dict[str, Any]]) -> Optional[float]:
    values = [s["value"] for s in summary.values()]
    return sum(values) / len(values) if values else None


def markdown_table(model_name: str, summary: dict[str, dict[str, Any]]) -> str:
    """Header, separator and one row in the seed tables' format (percent, 2 decimals, average last)."""
    titles = [SEED_COLUMNS.get(t, t) for t in summary]
    header = "| Model | " + " | ".join(titles + ["avg"]) + " |"
    sep = "|" + "---|" * (len(titles) + 2)
    cells = [f"{100 * s['value']:.2f}" for s in summary.values()]
    avg = average(summary)
    row = f"| {model_name} | " + " | ".join(cells + [f"{100 * avg:.2f}" if avg is not None else "-"]) + " |"
    return "\n".join([header, sep, row])


# ---- running -----------------------------------------------------------------------------------------
def require_tokenizer_dir(checkpoint: Path) -> Path:
    """The folder with the tokenizer lm-eval will use: an HF folder's own, else the one near the lit checkpoint
    (FileNotFoundError when there is none)."""
    from lit_gpt.convert import is_hf_folder
    from lit_gpt.weights import find_tokenizer_dir, has_tokenizer

    if is_hf_folder(checkpoint):
        if not has_tokenizer(checkpoint):
            raise FileNotFoundError(f"{checkpoint}: no tokenizer.json or tokenizer.model in this Hugging Face folder")
        return checkpoint
    folder = find_tokenizer_dir(checkpoint)
    if folder is None:
        raise FileNotFoundError(f"{checkpoint}: no tokenizer.model or tokenizer.json in this checkpoint folder or "
                                "its parents (lm-eval needs the tokenizer)")
    return folder


def export_hf(checkpoint: Path, tokenizer_dir: Path, out_dir: PathLike) -> Path:
    """Writes the lit checkpoint at `checkpoint` (any layout `lit_gpt.checkpoint` reads) as an HF folder."""
    from lit_gpt.checkpoint import find_config, load_model_state
    from lit_gpt.convert import save_hf_folder

    config = find_config(checkpoint)
    return save_hf_folder(load_model_state(checkpoint), config, out_dir, tokenizer_dir=tokenizer_dir,
                          overwrite=True, source_path=checkpoint)


def run_lm_eval(hf_folder: PathLike, tasks: Sequence[str], manager, num_fewshot: Optional[int] = None,
                limit: Optional[float] = None, batch_size: Union[int, str] = 1, device: str = "cpu",
                dtype: str = "float32") -> dict[str, Any]:
    """lm-eval's `hf` model on an HF folder; returns lm-eval's results dict (without per-sample logs)."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(hf_folder), "dtype": dtype}, tasks=list(tasks),
        num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device, task_manager=manager,
        log_samples=False,
    )
    if results is None:  # only non-zero ranks of a distributed run get None; this runs in one process
        raise RuntimeError("lm-eval returned no results")
    return results


def evaluate_checkpoint(
    checkpoint: PathLike,
    tasks: Sequence[str] = DEFAULT_TASKS,
    num_fewshot: Optional[int] = None,
    limit: Optional[float] = None,
    batch_size: Union[int, str] = 1,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    include_path: Optional[Sequence[PathLike]] = None,
    output: Optional[PathLike] = None,
    model_name: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluates a lit checkpoint (lit folder, training step folder or out_dir) or an HF folder with lm-eval and
    writes `output` (default: `eval_results.json` in the checkpoint's folder). Returns the written dict:
    {"checkpoint", "model", "summary": {task: {metric, value, stderr}}, "average", "markdown", "lm_eval": {...}}.

    Expected input errors raise FileNotFoundError/ValueError with a one-line message; a dataset that cannot be
    reached (offline) raises ConnectionError/OSError naming the task setup (see docs/evaluation.md)."""
    import torch

    from lit_gpt.checkpoint import resolve_checkpoint
    from lit_gpt.convert import is_hf_folder

    check_limit(limit)
    checkpoint = resolve_checkpoint(checkpoint)
    tokenizer_dir = require_tokenizer_dir(checkpoint)
    manager = task_manager(include_path)
    check_tasks(tasks, manager)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    output = Path(output) if output is not None else folder / EVAL_RESULTS
    model_name = model_name or default_model_name(folder)
    if output.exists() and output.is_dir():
        raise ValueError(f"{output}: --output is a folder, expected a JSON file path")

    if is_hf_folder(checkpoint):
        results = run_lm_eval(checkpoint, tasks, manager, num_fewshot, limit, batch_size, device, dtype)
    else:
        with tempfile.TemporaryDirectory(prefix="lit_gpt_eval_") as tmp:
            hf_folder = export_hf(checkpoint, tokenizer_dir, Path(tmp) / "hf")
            results = run_lm_eval(hf_folder, tasks, manager, num_fewshot, limit, batch_size, device, dtype)

    summary = summarize(results)
    report = {
        "checkpoint": str(checkpoint),
        "model": model_name,
        "summary": summary,
        "average": average(summary),
        "training": read_training_metadata(folder),
        "markdown": markdown_table(model_name, summary),
        "output": str(output),
        "lm_eval": results,
    }
    write_json(output, report)
    return report


def default_model_name(folder: Path) -> str:
    """The folder name; for a training step folder `out/run/checkpoints/step-00001000`, "run-step-00001000"."""
    if step_of(folder) is not None:
        return f"{run_dir(folder).name}-{folder.name}"
    return folder.name


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Atomic write (temp file in the same folder, fsync, rename) of a possibly not-quite-JSON lm-eval dict."""
    from lm_eval.utils import handle_non_serializable

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, default=handle_non_serializable)
        f.write("\n")
