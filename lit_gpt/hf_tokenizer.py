"""The tokenizer of a Hugging Face export: tokenizer.json + tokenizer_config.json pinned so that `AutoTokenizer`
encodes every text exactly as lit_gpt's `Tokenizer` does (the ids the training data was prepared with), checked on
tricky texts after writing; and the conversion of a sentencepiece model into a `tokenizers` pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from lit_gpt.config import Config
from lit_gpt.layout import PathLike
from lit_gpt.utils import first_line, write_json
from lit_gpt.weights import copy_tokenizer_files

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
    write_json(out_dir / "tokenizer_config.json", _tokenizer_config(out_dir, config, tok, source.backend, bos, eos))
    if (out_dir / "special_tokens_map.json").is_file():  # older transformers let it override tokenizer_config.json
        write_json(out_dir / "special_tokens_map.json", _special_tokens(
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
