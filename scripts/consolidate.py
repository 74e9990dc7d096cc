"""Consolidate a training checkpoint (FSDP sharded state/ or single-file state.pth) into one lit checkpoint folder.

    python scripts/consolidate.py out/microllama                          # newest step -> out/microllama/consolidated
    python scripts/consolidate.py out/microllama/checkpoints/step-00010000 out/microllama-10k --overwrite

The output folder holds lit_model.pth (the model weights only, one file), model_config.json, the tokenizer files,
train_metadata.json (step, tokens seen) and checksums.json (verified by every reader); every lit_gpt tool (generate,
eval, convert_lit_to_hf) reads it. It is written to a temporary sibling folder and renamed at the end, so an
interrupted run leaves nothing half-written. Damaged input (a file whose checksum differs) or a full disk ends in one
line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lit_gpt.checkpoint import consolidate, resolve_checkpoint
from lit_gpt import layout
from lit_gpt.layout import LIT_WEIGHTS
from lit_gpt.weights import check_output_folder, check_tokenizer_dir


def parse_args(argv=None) -> argparse.Namespace:
    # the help texts state the defaults; exact option names only
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("checkpoint", type=Path,
                   help="training out_dir (its newest step), a step folder, its state/ folder or a state.pth file")
    p.add_argument("out_dir", type=Path, nargs="?", default=None,
                   help="lit checkpoint folder to create (default: 'consolidated' in the training out_dir)")
    p.add_argument("--tokenizer_dir", type=Path, default=None,
                   help="folder with tokenizer.model and/or tokenizer.json (default: found in the step folder, the "
                        "checkpoints/ folder or the training out_dir)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists and is not empty")
    return p.parse_args(argv)


def default_out_dir(checkpoint: Path) -> Path:
    """`<training out_dir>/consolidated` for `<out_dir>/checkpoints/step-XXXXXXXX`, else `consolidated` beside it."""
    return layout.run_dir(layout.step_folder(checkpoint)) / "consolidated"


def describe(checkpoint: Path) -> str:
    """What is about to be read: the layout, shard count and size on disk."""
    step = layout.step_folder(checkpoint)
    state = layout.state_path(step, sharded=layout.is_sharded(step))
    if state.is_dir():
        files = [f for f in state.iterdir() if f.is_file()]
        shards = sum(f.suffix == ".distcp" for f in files)
        return f"sharded FSDP checkpoint, {shards} shards, {mb(sum(f.stat().st_size for f in files))}"
    if state.is_file():
        return f"single-file checkpoint, {mb(state.stat().st_size)}"
    return "checkpoint"


def progress(checkpoint: Path) -> str:
    meta = layout.read_training_metadata(layout.step_folder(checkpoint))
    parts = [f"step {meta['step']:,}"] if "step" in meta else []
    parts += [f"{meta['tokens_seen']:,} tokens seen"] if "tokens_seen" in meta else []
    return f" ({', '.join(parts)})" if parts else ""


def mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:,.1f} MB"


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        checkpoint = resolve_checkpoint(args.checkpoint)
        out_dir = args.out_dir or default_out_dir(checkpoint)
        check_output_folder(out_dir, args.overwrite)  # refuse before reading a large checkpoint
        check_tokenizer_dir(args.tokenizer_dir)
        print(f"reading {checkpoint}{progress(checkpoint)}: {describe(checkpoint)} (weights + optimizer state)")
        consolidate(checkpoint, out_dir, overwrite=args.overwrite, tokenizer_dir=args.tokenizer_dir)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    written = sorted(f for f in out_dir.iterdir() if f.is_file())
    print(f"wrote {out_dir}: " + ", ".join(f"{f.name} ({mb(f.stat().st_size)})" if f.name == LIT_WEIGHTS else f.name
                                           for f in written))
    if not any(f.name in ("tokenizer.model", "tokenizer.json") for f in written):
        print("note: no tokenizer files found near the checkpoint; pass --tokenizer_dir to include them")
    print(f"done in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
