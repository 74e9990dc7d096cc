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
# Strings where tokenizer pipelines tend to disagree (dummy prefix, whitespace runs, byte fallback, scripts outside
# Latin): the export is checked on these against lit_gpt's `Tokenizer`.
PROBE_TEXTS = (
    "", " A single leading space.", "  Two leading spaces", "trailing space ", "trailing spaces   ",
    "multiple   inner    spaces", "\nA newline first", "lines\nand\n\nblank lines\n", "\ttabs\tinside\t",
    " \t \n mixed whitespace ", "中文的句子，还有标点。", "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 😀👍🏽 and 🇺🇳",
    "Hello, World! 12345 3.14 don't", "ｆｕｌｌ width ①",
)
# Special pieces inside a text: sentencepiece reads them as characters, and so does the export of a sentencepiece BPE
# model; tokenizers' unigram model cannot be kept from matching them as pieces, so sentencepiece unigram models (a
# known difference) are not checked on this one.
SPECIAL_PIECES_TEXT = "</s> and <s> or <unk> as text"


def write_hf_tokenizer(tokenizer_dir: Optional[PathLike], out_dir: PathLike, config: Config) -> list[str]:
    """Copies the tokenizer files of `tokenizer_dir` into `out_dir` and pins how `AutoTokenizer` reads them, so the
    export encodes every text exactly as lit_gpt's `Tokenizer` does (the ids the training data was prepared with):

    - tokenizer.json is what lit_gpt encodes with: the copied one, or, when lit_gpt reads a sentencepiece
      `tokenizer.model`, one converted from it (replacing any tokenizer.json beside it);
    - tokenizer_config.json names the generic fast class, which uses tokenizer.json as written: the Llama classes
      rebuild their own pre-tokenizer from `legacy`/`add_prefix_space` and can add or drop a "▁" before leading
      whitespace;
    - `tokenizer("text")` gives [BOS] + ids, as lit_gpt's `encode(text, bos=True)` (no EOS); BOS/EOS are lit_gpt's
      (the config's ids where the tokenizer names none).

    When transformers is installed the written folder is loaded with AutoTokenizer and compared on `PROBE_TEXTS`;
    a difference raises a one-line ValueError. Returns the names written."""
    from tokenizers import Tokenizer as HFTokenizer, models, processors

    from lit_gpt.tokenizer import Tokenizer

    if tokenizer_dir is None:
        return []
    out_dir = Path(out_dir)
    source = Tokenizer(tokenizer_dir)
    written = copy_tokenizer_files(tokenizer_dir, out_dir)
    if source.backend == "sentencepiece":
        tok = sentencepiece_to_tokenizers(source.path)
    else:
        tok = HFTokenizer.from_file(str(out_dir / "tokenizer.json"))
    bos, eos = (_piece(tok, lit_id, config_id) for lit_id, config_id in
                ((source.bos_id, config.bos_id), (source.eos_id, config.eos_id)))
    tok.post_processor = processors.TemplateProcessing(  # what tokenizer(text) adds, for every transformers version
        single=f"{bos} $A" if bos else "$A", pair=f"{bos} $A {bos} $B" if bos else "$A $B",
        special_tokens=[(bos, tok.token_to_id(bos))] if bos else [])
    tok.save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(out_dir, config, tok, source.backend, bos, eos))
    if (out_dir / "special_tokens_map.json").is_file():  # older transformers let it override tokenizer_config.json
        _write_json(out_dir / "special_tokens_map.json", _special_tokens(
            json.loads((out_dir / "special_tokens_map.json").read_text()), bos, eos))
    unigram_spm = source.backend == "sentencepiece" and isinstance(tok.model, models.Unigram)
    check_hf_tokenizer(source, out_dir, *(None if p is None else tok.token_to_id(p) for p in (bos, eos)),
                       texts=PROBE_TEXTS if unigram_spm else PROBE_TEXTS + (SPECIAL_PIECES_TEXT,))
    return sorted(set(written) | {"tokenizer.json", "tokenizer_config.json"})


def _piece(tok, lit_id: Optional[int], config_id: Optional[int]) -> Optional[str]:
    """The BOS/EOS piece: lit_gpt's, else the config's id when tokenizer.json holds it as a special token."""
    if lit_id is not None:
        return tok.id_to_token(lit_id)
    special = tok.get_added_tokens_decoder().get(config_id) if config_id is not None else None
    return special.content if special is not None and special.special else None


def _special_tokens(cfg: dict, bos: Optional[str], eos: Optional[str]) -> dict:
    """`cfg` naming `bos`/`eos`; null for none, so that no reader falls back to config.json's ids."""
    return {**cfg, "bos_token": bos, "eos_token": eos}


def _tokenizer_config(folder: Path, config: Config, tok, backend: str, bos: Optional[str], eos: Optional[str]
                      ) -> dict:
    """The copied tokenizer_config.json (or a new one) with the class, BOS/EOS and their adding pinned."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {"model_max_length": config.block_size}
    for key in ("legacy", "add_prefix_space", "auto_map"):  # only the classes no longer named read these
        cfg.pop(key, None)
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False,
               add_bos_token=bos is not None, add_eos_token=False,
               # sentencepiece reads "</s>" in a text as characters, tokenizers (lit_gpt's tokenizer.json) as EOS
               split_special_tokens=backend == "sentencepiece")
    if "unk_token" not in cfg and tok.id_to_token(0) in ("<unk>", "<UNK>", "[UNK]"):
        cfg["unk_token"] = tok.id_to_token(0)
    return _special_tokens(cfg, bos, eos)


def check_hf_tokenizer(source, folder: Path, bos_id: Optional[int], eos_id: Optional[int],
                       texts: tuple[str, ...] = PROBE_TEXTS) -> None:
    """Raises a one-line ValueError unless `AutoTokenizer` and lit_gpt on `folder` both read BOS/EOS as `bos_id`/
    `eos_id`, and AutoTokenizer encodes every text of `texts` as `source` (a `lit_gpt.tokenizer.Tokenizer`)
    does, with BOS first when special tokens are added. Skipped when transformers is not installed."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    from lit_gpt.tokenizer import Tokenizer

    exported = Tokenizer(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers warns about the files it reads; the comparison below is the word
    try:
        hf = AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise ValueError(f"{source.path}: the exported tokenizer does not load with AutoTokenizer "
                         f"({first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    prefix = f"{source.path}: the exported tokenizer disagrees with lit_gpt's"
    for name, ids in (("AutoTokenizer", (hf.bos_token_id, hf.eos_token_id)), ("lit_gpt", (exported.bos_id,
                                                                                         exported.eos_id))):
        if ids != (bos_id, eos_id):
            raise ValueError(f"{prefix}: {name} reads BOS/EOS ids {ids[0]}/{ids[1]} from it, not {bos_id}/{eos_id}")
    bos = [] if bos_id is None else [bos_id]
    for text in texts:
        ids = source.encode(text)
        for got, want in ((hf(text, add_special_tokens=False)["input_ids"], ids), (hf(text)["input_ids"], bos + ids)):
            if got != want:
                raise ValueError(f"{prefix}: AutoTokenizer encodes {text!r} as {got}, lit_gpt as {want}")


def sentencepiece_to_tokenizers(model_file: PathLike):
    """A `tokenizers.Tokenizer` that encodes like the sentencepiece model in `model_file`: the same pieces
    (unigram or BPE, byte fallback), normalisation (precompiled charsmap, whitespace collapsing, dummy prefix),
    and whitespace splitting (no post-processor: `write_hf_tokenizer` sets the BOS policy)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_file).read_bytes())
    except Exception as e:
        raise ValueError(f"{model_file}: unreadable sentencepiece model ({e})") from None
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type == 1:  # unigram
        pieces = [(p.piece, p.score) for p in proto.pieces]
        tok = Tokenizer(models.Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback))
    elif trainer.model_type == 2:  # BPE: a merge builds a piece from two pieces; earlier (higher score) wins
        # only from normal pieces: sentencepiece reads "</s>", "<unk>" or "<0x41>" inside a text as characters
        normal = {p.piece for p in proto.pieces if p.type == 1}
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
        merges = sorted((i, vocab[p[:cut]], vocab[p[cut:]], p[:cut], p[cut:]) for p, i in vocab.items() if p in normal
                        for cut in range(1, len(p)) if p[:cut] in normal and p[cut:] in normal)
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
    return tok
