"""Prompt -> text from a lit checkpoint, with the KV cache; prints the text and the decoding speed.

    python scripts/generate.py --checkpoint out/microllama --prompt "Once upon a time" --max_new_tokens 100
    python scripts/generate.py --checkpoint out/microllama --temperature 0.8 --top_k 50 --top_p 0.95 --seed 42
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lit_gpt.checkpoint import load_model, resolve_checkpoint
from lit_gpt.convert import TORCH_DTYPES
from lit_gpt.generate import check_sampling_args, timed_generate
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.weights import find_tokenizer_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="lit checkpoint folder (lit_model.pth + model_config.json + tokenizer), a training step "
                        "folder, a training out_dir (its latest step) or a Hugging Face Llama folder")
    p.add_argument("--prompt", default="",
                   help="text to continue (BOS is prepended when the tokenizer has one; default: empty)")
    p.add_argument("--max_new_tokens", type=int, default=100,
                   help="most tokens to generate, also capped by block_size (default: 100)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy decoding (default); > 0 samples")
    p.add_argument("--top_k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None, help="nucleus sampling: smallest set reaching this probability")
    p.add_argument("--repetition_penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the text (CTRL/HF definition; default: 1.0 = off)")
    p.add_argument("--seed", type=int, default=1234, help="random seed for sampling (default: 1234)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default=None,
                   help="weights dtype (default: bfloat16 on CUDA, float32 on CPU)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.repetition_penalty)
        checkpoint = resolve_checkpoint(args.checkpoint)
        tokenizer_dir = find_tokenizer_dir(checkpoint)
        if tokenizer_dir is None:
            raise FileNotFoundError(f"{checkpoint}: no tokenizer.model or tokenizer.json in this checkpoint folder "
                                    "or its parents")
        tokenizer = Tokenizer(tokenizer_dir)
        cuda = args.device.startswith("cuda")
        dtype = TORCH_DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if cuda else torch.float32)
        model = load_model(checkpoint, device=args.device, dtype=dtype)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(f"{tokenizer.path}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                             f"vocab_size {model.config.vocab_size}")
        prompt_ids = tokenizer.encode(args.prompt, bos=tokenizer.bos_id is not None)
        if not prompt_ids:
            raise ValueError("the prompt is empty and the tokenizer has no BOS token to start from")
        eos_id = tokenizer.eos_id if tokenizer.eos_id is not None else model.config.eos_id
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        out = timed_generate(model, prompt_ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, repetition_penalty=args.repetition_penalty, eos_id=eos_id,
                             generator=generator)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    ids = out.ids
    if ids and ids[0] == tokenizer.bos_id:
        ids = ids[1:]
    if ids and ids[-1] == eos_id and len(out.new_ids):
        ids = ids[:-1]  # a stop, not text
    # decode prompt and continuation together: decoding the new ids alone would drop a leading space
    print(tokenizer.decode(ids))
    print(f"\n{len(out.new_ids)} tokens in {out.seconds:.2f} s: {out.tokens_per_second:.1f} tokens/s "
          f"({args.device}, {str(dtype).removeprefix('torch.')})", file=sys.stderr)


if __name__ == "__main__":
    main()
