"""lm-eval on a lit checkpoint or a Hugging Face folder; prints the seed tables' Markdown row, writes the full JSON.

    python scripts/eval.py --checkpoint out/microllama                     # the 7-task seed suite
    python scripts/eval.py --checkpoint out/microllama --tasks arc_easy,piqa --limit 200
    python scripts/eval.py --checkpoint out/demo/train --include_path tests/tasks --tasks tiny_mc
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lit_gpt.evaluate import DEFAULT_TASKS, evaluate_checkpoint
from lit_gpt.layout import EVAL_RESULTS
from lit_gpt.utils import first_line


def number(text: str):
    """--limit: an int (examples per task) or a float fraction."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def batch_size(text: str):
    return text if text.startswith("auto") else int(text)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="lit checkpoint folder, training step folder or out_dir (converted to a temporary Hugging "
                        "Face folder), or a Hugging Face Llama folder (evaluated as is)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help="comma-separated lm-eval task names (default: the seed suite, %(default)s)")
    p.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples (default: each task's own, 0)")
    p.add_argument("--limit", type=number, default=None,
                   help="examples per task (int >= 1) or a fraction of each task (float in (0, 1]); for quick checks")
    p.add_argument("--batch_size", type=batch_size, default=1, help="lm-eval batch size, or 'auto' (default: 1)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--include_path", type=Path, action="append", default=None,
                   help="folder of extra lm-eval task YAMLs (repeatable), e.g. tests/tasks or your offline copies")
    p.add_argument("--output", type=Path, default=None,
                   help=f"results JSON path (default: {EVAL_RESULTS} in the checkpoint folder, where the model card "
                        "picks it up)")
    p.add_argument("--name", default=None, help="model name in the Markdown row (default: the checkpoint folder name)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        report = evaluate_checkpoint(args.checkpoint, tasks, num_fewshot=args.num_fewshot, limit=args.limit,
                                     batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                                     include_path=args.include_path, output=args.output, model_name=args.name)
    except ConnectionError as e:  # a hub dataset while offline
        sys.exit(f"error: cannot load a task's dataset: {first_line(e)} (offline? see docs/evaluation.md)")
    except (FileNotFoundError, FileExistsError, ValueError, PermissionError) as e:
        sys.exit(f"error: {first_line(e)}")
    for task, s in report["summary"].items():
        stderr = f" ± {100 * s['stderr']:.2f}" if s["stderr"] is not None else ""
        print(f"{task}: {s['metric']} {100 * s['value']:.2f}{stderr}")
    print()
    print(report["markdown"])
    print(f"\nwrote {report['output']}")


if __name__ == "__main__":
    main()
