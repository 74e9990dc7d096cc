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

from lit_gpt.checkpoint import (
    PathLike, atomic_folder, check_shapes, check_state_dict, copy_tokenizer_files, lit_shapes, state_nbytes,
)
from lit_gpt.config import Config
from lit_gpt.utils import first_line

Log = Optional[Callable[[str], None]]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    hf = {new: state_dict[old] for old, new in _renames(config).items()}
    for fused, parts, rows in _fused(config):
        hf.update(zip(parts, state_dict[fused].split(rows, dim=0)))
    return hf


def hf_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """HF name -> shape for `config` (without lm_head when tied)."""
    meta = {k: torch.empty(s, device="meta") for k, s in lit_shapes(config).items()}
    return {k: tuple(v.shape) for k, v in lit_to_hf(meta, config).items()}


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
    if config.tie_embeddings:
        lit["lm_head.weight"] = lit["embed.weight"]
    return lit


# ---- reading HF folders ------------------------------------------------------------------------
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
            _write_json(tmp / "model.safetensors.index.json", index)
        hf_config = config.to_hf(torch_dtype=dtype_name)
        hf_config["dtype"] = dtype_name  # the key transformers >= 5 reads; torch_dtype for older versions
        _write_json(tmp / "config.json", hf_config)
        generation = {"bos_token_id": config.bos_id, "eos_token_id": config.eos_id}
        _write_json(tmp / "generation_config.json", {k: v for k, v in generation.items() if v is not None})
        written = write_hf_tokenizer(tokenizer_dir, tmp, config)
        if log:
            log(f"tokenizer files: {', '.join(written) if written else 'none (no tokenizer folder given)'}")
        if model_card:
            from lit_gpt.model_card import write_model_card

            write_model_card(tmp, config, source_path)
    return out_dir


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---- tokenizer ---------------------------------------------------------------------------------
def write_hf_tokenizer(tokenizer_dir: Optional[PathLike], out_dir: PathLike, config: Config) -> list[str]:
    """Copies the tokenizer files of `tokenizer_dir` into `out_dir`. A sentencepiece `tokenizer.model` without a
    `tokenizer.json` also gets an equivalent `tokenizer.json` and a `tokenizer_config.json`, so AutoTokenizer
    loads it (fast tokenizer, BOS added like lit_gpt's `encode(bos=True)`). Returns the names written."""
    out_dir = Path(out_dir)
    written = copy_tokenizer_files(tokenizer_dir, out_dir)
    spm_file = out_dir / "tokenizer.model"
    if "tokenizer.json" not in written and spm_file.is_file():
        sentencepiece_to_tokenizers(spm_file).save(str(out_dir / "tokenizer.json"))
        written.append("tokenizer.json")
        # transformers' LlamaTokenizer class rebuilds its own pipeline (Llama's normalisation) on top of
        # tokenizer.json: the generic fast class uses the file as written, which encodes like sentencepiece
        tokenizer_config = _tokenizer_config(out_dir, config)
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
        if "tokenizer_config.json" not in written:
            written.append("tokenizer_config.json")
    elif "tokenizer_config.json" not in written and (out_dir / "tokenizer.json").is_file():
        _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(out_dir, config))
        written.append("tokenizer_config.json")
    return written


def _tokenizer_config(folder: Path, config: Config) -> dict:
    """The copied tokenizer_config.json, or one naming the BOS/EOS/UNK pieces of `config`'s ids in tokenizer.json."""
    from tokenizers import Tokenizer as HFTokenizer

    if (folder / "tokenizer_config.json").is_file():
        return json.loads((folder / "tokenizer_config.json").read_text())
    tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    out = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": config.block_size,
           "clean_up_tokenization_spaces": False, "add_bos_token": config.bos_id is not None, "add_eos_token": False}
    for key, token_id in (("bos_token", config.bos_id), ("eos_token", config.eos_id)):
        if token_id is not None and tok.id_to_token(token_id) is not None:
            out[key] = tok.id_to_token(token_id)
    if tok.id_to_token(0) in ("<unk>", "<UNK>", "[UNK]"):
        out["unk_token"] = tok.id_to_token(0)
    return out


def sentencepiece_to_tokenizers(model_file: PathLike):
    """A `tokenizers.Tokenizer` that encodes like the sentencepiece model in `model_file`: the same pieces
    (unigram or BPE, byte fallback), normalisation (precompiled charsmap, whitespace collapsing, dummy prefix),
    whitespace splitting, and a post-processor adding BOS."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as e:
        raise ValueError(f"{model_file}: unreadable sentencepiece model ({e})") from None
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if trainer.model_type == 1:  # unigram
        tok = Tokenizer(models.Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback))
    elif trainer.model_type == 2:  # BPE: a merge builds a piece from two pieces; earlier (higher score) wins
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        merges = sorted((i, vocab[p[:cut]], vocab[p[cut:]], p[:cut], p[cut:]) for p, i in vocab.items()
                        for cut in range(1, len(p)) if p[:cut] in vocab and p[cut:] in vocab)
        tok = Tokenizer(models.BPE(vocab, [(a, b) for *_, a, b in merges], unk_token=trainer.unk_piece,
                                   fuse_unk=True, byte_fallback=trainer.byte_fallback))
    else:
        raise ValueError(f"{model_file}: sentencepiece model type {trainer.model_type} is not supported "
                         "(only unigram and BPE)")
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    splits = []
    if trainer.split_by_whitespace and trainer.allow_whitespace_only_pieces:  # a whitespace run starts one word
        splits.append(pre_tokenizers.Split(Regex("▁+"), behavior="merged_with_next"))
    elif trainer.split_by_whitespace:  # every "▁" starts a word
        splits.append(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True))
    if trainer.split_digits:
        splits.append(pre_tokenizers.Digits(individual_digits=True))
    if splits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(splits)
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    # unk/control pieces are special tokens; user-defined pieces always match as themselves
    tok.add_tokens([AddedToken(p.piece, special=p.type != 4, normalized=False)
                    for p in proto.pieces if p.type in (2, 3, 4)])
    if trainer.bos_id >= 0:
        bos = proto.pieces[trainer.bos_id].piece
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, trainer.bos_id)])
    return tok
