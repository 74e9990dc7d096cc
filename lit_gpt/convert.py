"""Conversion between lit_gpt weights and Hugging Face `LlamaForCausalLM` folders, both ways.

lit_gpt fuses q/k/v into `attn.qkv` (rows: q heads, k heads, v heads) and gate/up into `mlp.gate_up` (gate rows
first); HF keeps them apart. RoPE uses the same half-rotation layout on both sides, so no row permutation is needed.
With tied embeddings HF stores no `lm_head.weight`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from lit_gpt.config import Config
from lit_gpt.hf_tokenizer import write_hf_tokenizer
from lit_gpt.integrity import state_nbytes
from lit_gpt.layout import PathLike
from lit_gpt.utils import first_line, write_json
from lit_gpt.weights import atomic_folder, check_shapes, check_state_dict, lit_shapes, tie_weights

Log = Optional[Callable[[str], None]]
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---- name mapping ------------------------------------------------------------------------------
def _renames(config: Config) -> dict[str, str]:
    """lit name -> HF name for the tensors that map one to one."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(config.n_layer):
        lit, hf = f"blocks.{i}.", f"model.layers.{i}."
        names[lit + "attn_norm.weight"] = hf + "input_layernorm.weight"
        names[lit + "attn.proj.weight"] = hf + "self_attn.o_proj.weight"
        names[lit + "mlp_norm.weight"] = hf + "post_attention_layernorm.weight"
        names[lit + "mlp.down.weight"] = hf + "mlp.down_proj.weight"
    return names


def _fused(config: Config) -> list[tuple[str, list[str], list[int]]]:
    """(lit fused name, HF part names, row count of each part) for qkv and gate_up of every layer."""
    q_rows, kv_rows = config.n_head * config.head_size, config.n_query_groups * config.head_size
    out = []
    for i in range(config.n_layer):
        lit, hf = f"blocks.{i}.", f"model.layers.{i}."
        out.append((lit + "attn.qkv.weight", [hf + f"self_attn.{p}_proj.weight" for p in "qkv"],
                    [q_rows, kv_rows, kv_rows]))
        out.append((lit + "mlp.gate_up.weight", [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"],
                    [config.intermediate_size] * 2))
    return out


def lit_to_hf(state_dict: dict[str, torch.Tensor], config: Config, source: PathLike = "state dict"
              ) -> dict[str, torch.Tensor]:
    """HF Llama state dict from a lit GPT state dict (checked against `config` first). Tensors are views."""
    check_state_dict(state_dict, config, source)
    return _split(state_dict, config)


def _split(state_dict: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    hf = {new: state_dict[old] for old, new in _renames(config).items()}
    for fused, parts, rows in _fused(config):
        hf.update(zip(parts, state_dict[fused].split(rows, dim=0)))
    return hf


def hf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """HF name -> shape for `config` (without lm_head when tied)."""
    meta = {k: torch.empty(s, device="meta") for k, s in lit_shapes(config).items()}
    return {k: tuple(v.shape) for k, v in _split(meta, config).items()}


def hf_to_lit(hf_state_dict: dict[str, torch.Tensor], config: Config, source: PathLike = "state dict"
              ) -> dict[str, torch.Tensor]:
    """lit GPT state dict from an HF Llama state dict (checked against `config` first). A tied model gets
    `lm_head.weight` as the same tensor as `embed.weight`; an HF `lm_head.weight` equal to the embedding is dropped."""
    hf = {k: v for k, v in hf_state_dict.items() if not k.endswith("rotary_emb.inv_freq")}  # old non-weights
    if config.tie_embeddings and "lm_head.weight" in hf:
        head = hf.pop("lm_head.weight")
        if head.shape != hf.get("model.embed_tokens.weight", head).shape or not torch.equal(
                head, hf.get("model.embed_tokens.weight", head)):
            raise ValueError(f"{source}: config {config.name!r} ties the embeddings but lm_head.weight differs "
                             "from model.embed_tokens.weight")
    check_shapes(hf, hf_shapes(config), config, source)
    lit = {old: hf[new] for old, new in _renames(config).items()}
    for fused, parts, _ in _fused(config):
        lit[fused] = torch.cat([hf[p] for p in parts], dim=0)
    return tie_weights(lit, config)


# ---- reading HF folders ------------------------------------------------------------------------
def is_hf_folder(path: PathLike) -> bool:
    """A Hugging Face model folder: config.json and safetensors or pytorch_model*.bin weights."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin")))


def read_safetensors(path: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file; a damaged file raises a one-line ValueError naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: corrupt or truncated safetensors file ({first_line(e)})") from None


def _read_bin(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: corrupt or unreadable pytorch_model.bin ({first_line(e)})") from None


def hf_weight_files(folder: PathLike) -> list[Path]:
    """The weight files of an HF folder: safetensors first, single or sharded (index), then pytorch_model.bin."""
    folder = Path(folder)
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{folder / index}: not a valid weights index ({e})") from None
            return [folder / name for name in sorted(set(weight_map.values()))]
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin (nor their .index.json)")


def load_hf_state_dict(folder: PathLike, log: Log = None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in hf_weight_files(folder):
        if log:
            log(f"reading {f} ({f.stat().st_size / 1e6:.1f} MB)")
        state.update(read_safetensors(f) if f.suffix == ".safetensors" else _read_bin(f))
    return state


def load_hf_folder(folder: PathLike, log: Log = None) -> tuple[Config, dict[str, torch.Tensor]]:
    """(Config from config.json, lit state dict) of a Hugging Face Llama folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Hugging Face model folder not found")
    config = Config.from_hf(folder, name=folder.name)
    return config, hf_to_lit(load_hf_state_dict(folder, log), config, folder)


# ---- writing HF folders ------------------------------------------------------------------------
def parse_size(size: Union[int, str]) -> int:
    """Bytes in "2GB", "500MB", "1.5GiB", "4096" (decimal units like HF; KiB/MiB/GiB are binary)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B?)\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"invalid size {size!r} (use e.g. 2GB, 500MB, 1GiB)")
    unit = m.group(2).upper().rstrip("B")
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    return int(float(m.group(1)) * scale[unit])


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_hf_folder(state_dict: dict[str, torch.Tensor], config: Config, out_dir: PathLike,
                   tokenizer_dir: Optional[PathLike] = None, dtype: torch.dtype = torch.float32,
                   max_shard_size: Union[int, str] = "2GB", model_card: bool = False, overwrite: bool = False,
                   source_path: Optional[PathLike] = None, log: Log = None) -> Path:
    """Writes a Hugging Face Llama folder (config.json, model.safetensors or shards + index,
    generation_config.json, tokenizer files) that `AutoModelForCausalLM.from_pretrained` and
    `AutoTokenizer.from_pretrained` load. Written to a temp sibling and renamed at the end (see `atomic_folder`)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    hf = {k: v.to(dtype).contiguous().clone() if v.is_floating_point() else v.contiguous().clone()
          for k, v in lit_to_hf(state_dict, config, source_path or "state dict").items()}
    shards = _shards(hf, parse_size(max_shard_size))
    dtype_name = str(dtype).removeprefix("torch.")
    with atomic_folder(out_dir, overwrite, need=state_nbytes([hf])) as tmp:
        names = (["model.safetensors"] if len(shards) == 1 else
                 [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
        for name, shard in zip(names, shards):
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            if log:
                log(f"wrote {out_dir / name} ({(tmp / name).stat().st_size / 1e6:.1f} MB, {len(shard)} tensors)")
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in hf.values())},
                     "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
            write_json(tmp / "model.safetensors.index.json", index)
        hf_config = config.to_hf(torch_dtype=dtype_name)
        hf_config["dtype"] = dtype_name  # the key transformers >= 5 reads; torch_dtype for older versions
        write_json(tmp / "config.json", hf_config)
        generation = {"bos_token_id": config.bos_id, "eos_token_id": config.eos_id}
        write_json(tmp / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        written = write_hf_tokenizer(tokenizer_dir, tmp, config)
        if log:
            log(f"tokenizer files: {', '.join(written) if written else 'none (no tokenizer folder given)'}")
        if model_card:
            from lit_gpt.model_card import write_model_card

            write_model_card(tmp, config, source_path)
    return out_dir
