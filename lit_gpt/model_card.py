"""README.md model card for an exported model: the shape, parameter count, training tokens and the eval table.

What it can find it reports, what it cannot it leaves out (never a placeholder number):
- training step and tokens: from the training checkpoint the export came from (`state.pth`, or `state/meta.pt`
  of a sharded one), or from a `train_metadata.json` ({"step": ..., "tokens_seen": ...}) in a lit folder;
- evaluation: `eval_results.json` as scripts/eval.py writes it next to the checkpoint, or a path given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lit_gpt.config import Config
from lit_gpt.layout import EVAL_RESULTS, PathLike, load_results, read_training_metadata
from lit_gpt.utils import atomic_write


def write_model_card(out_dir: PathLike, config: Config, source_path: Optional[PathLike] = None,
                     eval_results: Optional[PathLike] = None) -> Path:
    """Writes `out_dir/README.md` (atomically) and returns its path. `source_path` is the checkpoint the export
    came from (lit folder, step folder, or a weights file); `eval_results` overrides the eval_results.json found
    next to it."""
    out_dir = Path(out_dir)
    source_dir = None
    if source_path is not None:
        source_path = Path(source_path)
        source_dir = source_path if source_path.is_dir() else source_path.parent
    if eval_results is None and source_dir is not None and (source_dir / EVAL_RESULTS).is_file():
        eval_results = source_dir / EVAL_RESULTS
    report = load_results(eval_results) if eval_results is not None else None
    training = read_training_metadata(source_dir) if source_dir is not None else {}
    text = render_model_card(config, training, report)

    path = out_dir / "README.md"
    with atomic_write(path) as f:
        f.write(text)
    return path


def human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def render_model_card(config: Config, training: dict[str, Any], report: Optional[dict[str, Any]]) -> str:
    c = config
    n_params = c.num_params()
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [llama, lit_gpt, pretraining]",
        "---",
        "",
        f"# {c.name}",
        "",
        f"A Llama-architecture decoder ({human(n_params)} parameters) pretrained from scratch with lit_gpt and "
        "exported to the Hugging Face `LlamaForCausalLM` format.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {n_params:,} ({human(n_params)}; {c.num_params(include_embedding=False):,} without the "
        "input embedding) |",
        f"| layers | {c.n_layer} |",
        f"| hidden size | {c.n_embd} |",
        f"| attention heads (query / key-value) | {c.n_head} / {c.n_query_groups} "
        f"({'MHA' if c.n_head == c.n_query_groups else 'GQA'}, head size {c.head_size}) |",
        f"| MLP | SwiGLU, intermediate size {c.intermediate_size} |",
        f"| vocabulary | {c.vocab_size} |",
        f"| context length | {c.block_size} |",
        f"| normalisation | RMSNorm, eps {c.norm_eps:g} |",
        f"| position encoding | RoPE, base {c.rope_base:g} |",
        f"| tied input/output embeddings | {'yes' if c.tie_embeddings else 'no'} |",
        f"| BOS / EOS ids | {c.bos_id} / {c.eos_id} |",
        "",
    ]
    if training:
        lines += ["## Training", ""]
        if "tokens_seen" in training:
            lines.append(f"- tokens seen: {training['tokens_seen']:,} ({human(training['tokens_seen'])})")
        if "step" in training:
            lines.append(f"- optimizer steps: {training['step']:,}")
        lines.append("")
    if report is not None:
        lines += ["## Evaluation", "",
                  "lm-eval (`hf` model) on the converted weights; acc_norm where the task has it, acc for WinoGrande "
                  "and BoolQ, in percent.", "", report["markdown"], ""]
        cfg = (report.get("lm_eval") or {}).get("config") or {}
        shots = (report.get("lm_eval") or {}).get("n-shot") or {}
        notes = []
        if shots:
            notes.append("shots: " + ", ".join(f"{t} {n}" for t, n in shots.items() if t in report["summary"]))
        if cfg.get("limit") is not None:
            notes.append(f"limited to {cfg['limit']} examples per task")
        if notes:
            lines += ["(" + "; ".join(notes) + ")", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'ids = tokenizer("Once upon a time", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0]))",
        "```",
        "",
    ]
    return "\n".join(lines)
