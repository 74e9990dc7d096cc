"""lm-eval on intermediate checkpoints (`--lm_eval_interval N`, a multiple of save_interval): right after the
checkpoint of every N-th step is saved, rank 0 scores it with `lit_gpt.evaluate.evaluate_checkpoint` in a child
process (this module run as a script) while the other ranks wait at a barrier; the results go to the metrics
(`lm_eval/<task>`) and `eval_results.json` in that step folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Optional

import torch

from lit_gpt.layout import EVAL_RESULTS, LM_EVAL_LOG, load_results
from lit_gpt.training.args import TrainArgs
from lit_gpt.training.processes import LAUNCHER_ENV
from lit_gpt.utils import TrainError, format_duration


def check_lm_eval_args(args: TrainArgs) -> None:
    """Refuses a periodic lm-eval setup that would only fail hours into the run (no lm-eval, unknown task...)."""
    from lit_gpt.weights import has_tokenizer

    if args.lm_eval_interval is None:
        return
    if args.lm_eval_interval <= 0 or args.lm_eval_interval % args.save_interval:
        raise TrainError(f"lm_eval_interval {args.lm_eval_interval} must be a positive multiple of save_interval "
                         f"{args.save_interval} (lm-eval scores the checkpoint saved at that step)")
    if args.keep_last_k == 0:
        raise TrainError("lm_eval_interval needs keep_last_k >= 1 or null (0 deletes the checkpoint it scores)")
    if args.tokenizer_dir is None and not has_tokenizer(args.out_dir):
        raise TrainError("lm_eval_interval needs --tokenizer_dir (lm-eval tokenizes the tasks' text)")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise TrainError("lm_eval_interval needs lm-eval: pip install -e '.[eval]'") from None
    from lit_gpt.evaluate import check_limit, check_tasks, task_manager

    try:
        check_limit(args.lm_eval_limit)
        include = [args.lm_eval_include_path] if args.lm_eval_include_path else None
        check_tasks(args.lm_eval_tasks, task_manager(include))
    except (FileNotFoundError, ValueError) as e:
        raise TrainError(f"lm_eval: {e}".replace("--limit", "--lm_eval_limit").replace(
            "--include_path", "--lm_eval_include_path")) from None


def evaluate_step(fabric, args: TrainArgs, step_dir: Path, step: int, tokens_seen: int, logger) -> None:
    """Rank 0 scores the checkpoint of `step` just saved in `step_dir` with lm-eval in a child process, the other
    ranks wait. A child, not a call in this process: lm-eval seeds random/numpy/torch and its `hf` model starts its own distributed
    setup from the launcher's environment, and reading a sharded checkpoint here would issue collectives the
    other ranks never join. A failed evaluation is reported and training goes on."""
    if fabric.global_rank == 0:
        t0 = time.perf_counter()
        report, error = run_lm_eval_child(step_dir, args, fabric.device)
        took = format_duration(time.perf_counter() - t0)
        if error is not None:
            fabric.print(f"step {step} | lm-eval failed after {took}, training goes on: {error}")
        else:
            values = {f"lm_eval/{task}": s["value"] for task, s in report["summary"].items()}
            if report["average"] is not None:
                values["lm_eval/avg"] = report["average"]
            if logger is not None:
                logger.log({"step": step, "tokens": tokens_seen, **values})
            scores = ", ".join(f"{task} {s['metric']} {100 * s['value']:.2f}"
                               for task, s in report["summary"].items())
            fabric.print(f"step {step} | lm-eval {scores} ({took}) -> {report['output']}")
    fabric.barrier()


def run_lm_eval_child(step_dir: Path, args: TrainArgs, device: torch.device) -> tuple[Optional[dict], Optional[str]]:
    """Runs `evaluate_checkpoint` on `step_dir` in a fresh single-process Python (launcher variables removed), its
    output logged to `step_dir/lm_eval.log`. Returns (report, None) or (None, the one-line error)."""
    limit = args.lm_eval_limit
    kwargs = {"checkpoint": str(step_dir), "tasks": list(args.lm_eval_tasks), "num_fewshot": args.lm_eval_num_fewshot,
              "limit": int(limit) if limit is not None and limit >= 1 else limit,
              "batch_size": args.lm_eval_batch_size, "device": str(device),
              "include_path": [str(args.lm_eval_include_path)] if args.lm_eval_include_path else None}
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCHER_ENV and not k.startswith(("TORCHELASTIC_", "LT_"))}
    log = step_dir / LM_EVAL_LOG
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "lit_gpt.training.lm_eval_hook", json.dumps(kwargs)], stdout=f,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        return None, f"{reason.removeprefix('error: ')} (log: {log})"
    return load_results(step_dir / EVAL_RESULTS), None


def main() -> None:
    """The child process of `run_lm_eval_child`: evaluate_checkpoint(**json argv[1]); errors end in one line."""
    from lit_gpt.evaluate import evaluate_checkpoint

    try:
        evaluate_checkpoint(**json.loads(sys.argv[1]))
    except Exception as e:
        traceback.print_exc()  # into the log, for the unexpected cases; the parent reports the last line
        sys.exit(f"error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


if __name__ == "__main__":
    main()
