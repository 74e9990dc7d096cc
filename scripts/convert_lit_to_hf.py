"""Export a lit_gpt checkpoint as a Hugging Face Llama folder (AutoModelForCausalLM / AutoTokenizer load it).

    python scripts/convert_lit_to_hf.py out/microllama out/microllama-hf --dtype bfloat16
    python scripts/convert_lit_to_hf.py out/microllama/checkpoints/step-00010000 out/hf --model_card --overwrite

The checkpoint may be a lit checkpoint folder, a training step folder (state.pth or sharded state/), a training
out_dir (its latest step) or a .pth file. The output is written to a temporary sibling folder and renamed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lit_gpt.checkpoint import find_config, load_model_state, resolve_checkpoint
from lit_gpt.config import Config
from lit_gpt.convert import TORCH_DTYPES, parse_size, save_hf_folder
from lit_gpt.weights import check_output_folder, check_tokenizer_dir, find_tokenizer_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", type=Path,
                   help="lit checkpoint folder, training step folder, training out_dir (latest step) or .pth file")
    p.add_argument("out_dir", type=Path, help="Hugging Face folder to create")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="float32", help="dtype of the saved weights")
    p.add_argument("--tokenizer_dir", type=Path, default=None,
                   help="folder with tokenizer.model and/or tokenizer.json (default: found in the checkpoint "
                        "folder, its parent or the training out_dir)")
    p.add_argument("--config", default=None,
                   help="model config: a named config (e.g. MicroLlama-300M) or a model_config.json path "
                        "(default: the model_config.json stored with the checkpoint)")
    p.add_argument("--max_shard_size", default="2GB",
                   help="largest safetensors file; bigger models are sharded with model.safetensors.index.json")
    p.add_argument("--model_card", action="store_true", help="also write a README.md model card")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists and is not empty")
    return p.parse_args(argv)


def load_config(spec: str | None, checkpoint: Path) -> Config:
    if spec is None:
        return find_config(checkpoint)
    if spec.endswith(".json") or Path(spec).is_file():
        return Config.from_file(spec)
    return Config.from_name(spec)


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        parse_size(args.max_shard_size)
        check_output_folder(args.out_dir, args.overwrite)
        checkpoint = resolve_checkpoint(args.checkpoint)
        config = load_config(args.config, checkpoint)
        tokenizer_dir = args.tokenizer_dir or find_tokenizer_dir(checkpoint)
        check_tokenizer_dir(args.tokenizer_dir)
        print(f"reading {checkpoint} (config {config.name!r}, {config.num_params():,} parameters)")
        state_dict = load_model_state(checkpoint)
        print(f"writing {args.out_dir} ({args.dtype}, tokenizer from {tokenizer_dir or 'nowhere: none found'})")
        save_hf_folder(state_dict, config, args.out_dir, tokenizer_dir=tokenizer_dir, dtype=TORCH_DTYPES[args.dtype],
                       max_shard_size=args.max_shard_size, model_card=args.model_card, overwrite=args.overwrite,
                       source_path=checkpoint, log=print)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"done in {time.perf_counter() - t0:.1f}s: {args.out_dir}")


if __name__ == "__main__":
    main()
