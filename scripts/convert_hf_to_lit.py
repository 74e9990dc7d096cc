"""Import a Hugging Face Llama folder (e.g. MicroLlama, TinyLlama) as a lit checkpoint folder to continue
pretraining or to evaluate.

    python scripts/convert_hf_to_lit.py checkpoints/TinyLlama-1.1B out/tinyllama-lit --dtype float32

Reads config.json and model.safetensors / pytorch_model.bin (single or sharded); writes lit_model.pth,
model_config.json and the tokenizer files, through a temporary sibling folder renamed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lit_gpt.convert import TORCH_DTYPES, load_hf_folder
from lit_gpt.weights import check_output_folder, save_lit_folder


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("hf_dir", type=Path, help="Hugging Face folder with config.json and the weights")
    p.add_argument("out_dir", type=Path, help="lit checkpoint folder to create")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                   help="dtype of the saved weights (default: as stored in the Hugging Face files)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists and is not empty")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        check_output_folder(args.out_dir, args.overwrite)
        config, state_dict = load_hf_folder(args.hf_dir, log=print)
        print(f"config {config.name!r}: {config.num_params():,} parameters; writing {args.out_dir}")
        save_lit_folder(state_dict, config, args.out_dir, tokenizer_dir=args.hf_dir, overwrite=args.overwrite,
                        dtype=TORCH_DTYPES[args.dtype] if args.dtype else None)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"done in {time.perf_counter() - t0:.1f}s: {args.out_dir}")


if __name__ == "__main__":
    main()
