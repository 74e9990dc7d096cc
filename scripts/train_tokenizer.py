"""Train a BPE tokenizer on a sample of any corpus scripts/prepare_data.py reads (same source and row options).

The sample is the first --sample_docs documents (at most --sample_bytes of text) in the corpus's natural order, so a
fixed sample gives the same tokenizer.json byte for byte. Two kinds:

  bytelevel  GPT-2 / SmolLM style: text split by the GPT-2 pattern, BPE over bytes (no unknown pieces).
             Special tokens: <|endoftext|> = 0 (BOS and EOS, one separator between documents), <|pad|> = 1.
  llama      Llama / sentencepiece style: spaces become "▁" (one before the text's start), BPE over characters
             (the --limit_alphabet most frequent), any other character spelled by its UTF-8 bytes <0x00>..<0xFF>.
             Special tokens: <unk> = 0, <s> = 1 (BOS), </s> = 2 (EOS), <pad> = 3, then the 256 byte pieces.

The folder written (tokenizer.json, tokenizer_config.json, training.json: options and sample) loads in
lit_gpt.tokenizer.Tokenizer and in transformers' AutoTokenizer with the same ids. With --model_name, a
model_config.json of that shape with vocab_size = the tokenizer's size padded to a multiple of 64
(lit_gpt.config.padded_vocab_size) and the tokenizer's BOS/EOS ids is written beside it: train with
--model_config {out_dir}/model_config.json --tokenizer_dir {out_dir}.

  python scripts/train_tokenizer.py --hf_repo HuggingFaceFW/fineweb-edu --include 'sample/10BT/000_00000.parquet' \
      --kind bytelevel --vocab_size 49152 --sample_docs 500000 --model_name smol-llama-360M --out_dir data/tok49k
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import __version__ as tokenizers_version
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from lit_gpt.config import Config, padded_vocab_size
from lit_gpt.data import cli
from lit_gpt.data.formats import DataError, iter_texts
from lit_gpt.data.prepare import Stats
from lit_gpt.layout import MODEL_CONFIG
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.utils import replace_folder

SPECIALS = {"bytelevel": {"tokens": ["<|endoftext|>", "<|pad|>"], "bos": "<|endoftext|>", "eos": "<|endoftext|>",
                          "pad": "<|pad|>", "unk": None},
            "llama": {"tokens": ["<unk>", "<s>", "</s>", "<pad>"], "bos": "<s>", "eos": "</s>", "pad": "<pad>",
                      "unk": "<unk>"}}
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_corpus_args(p)
    cli.add_retry_args(p)
    p.add_argument("--kind", choices=sorted(SPECIALS), default="bytelevel", help="bytelevel (GPT-2/SmolLM) or llama "
                                                                               "(sentencepiece-like, byte fallback)")
    p.add_argument("--vocab_size", type=int, default=49152, help="pieces in all, special and byte pieces included")
    p.add_argument("--min_frequency", type=int, default=2, help="merge only pairs seen at least this often")
    p.add_argument("--limit_alphabet", type=int, default=1000, help="llama: characters kept as pieces")
    p.add_argument("--sample_docs", type=int, default=200_000, help="train on the first N documents")
    p.add_argument("--sample_bytes", type=int, default=2_000_000_000, help="... or up to this much text")
    p.add_argument("--model_name", help="also write model_config.json: this lit_gpt shape with the padded vocab_size")
    p.add_argument("--out_dir", type=Path, required=True, help="folder to write (replaced whole when it exists)")
    return p.parse_args(argv)


def sample(texts, max_docs: int, max_bytes: int, facts: dict):
    """The first documents of `texts` within the limits; counts them and hashes them into `facts`."""
    digest = hashlib.sha256()
    for text in texts:
        if facts["documents"] >= max_docs or facts["bytes"] >= max_bytes:
            return
        data = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(data).to_bytes(8, "little") + data)
        facts["documents"] += 1
        facts["bytes"] += len(data)
        facts["sha256"] = digest.hexdigest()
        yield text


def new_tokenizer(kind: str, vocab_size: int, min_frequency: int, limit_alphabet: int):
    """(untrained tokenizer, its trainer)."""
    specials = SPECIALS[kind]["tokens"]
    if kind == "bytelevel":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        return tok, trainer
    tok = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # as sentencepiece's dummy prefix: one "▁" before every text, even one that starts with a space (so decoding,
    # which drops it, gives the text back)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # the space the pre-tokenizer put first goes
    # the byte pieces go in the vocabulary through the trainer's special tokens, and leave the added tokens after
    # training (see `save`): as added tokens they would also match the literal text "<0x41>"
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
                                  special_tokens=specials + BYTE_PIECES, show_progress=False)
    return tok, trainer


def save(tok, kind: str, folder: Path, record: dict) -> None:
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in BYTE_PIECES]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n")
    names = SPECIALS[kind]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": names["bos"], "eos_token": names["eos"],
              "pad_token": names["pad"], "unk_token": names["unk"], "add_bos_token": False, "add_eos_token": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    source, include, exclude, reader = cli.corpus(args)
    if args.vocab_size < len(SPECIALS[args.kind]["tokens"]) + 256 + 1:
        sys.exit(f"error: --vocab_size {args.vocab_size} leaves no room for merges (256 byte pieces + specials)")
    model_config = None
    try:
        if args.model_name:
            model_config = Config.from_name(args.model_name)
        names = source.list_files(include, exclude)
        facts, stats = {"documents": 0, "bytes": 0, "sha256": None}, Stats()
        tok, trainer = new_tokenizer(args.kind, args.vocab_size, args.min_frequency, args.limit_alphabet)
        args.out_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.out_dir.parent, prefix=f".{args.out_dir.name}.tmp-") as tmp:
            texts = iter_texts(source, names, reader, Path(tmp), stats, log=print)
            tok.train_from_iterator(sample(texts, args.sample_docs, args.sample_bytes, facts), trainer)
            if not facts["documents"]:
                raise DataError(f"{source.describe()} {' '.join(include)}: no documents to train on")
            out = Path(tmp) / "tokenizer"
            out.mkdir()
            record = {"kind": args.kind, "vocab_size": tok.get_vocab_size(), "specials": {
                t: tok.token_to_id(t) for t in SPECIALS[args.kind]["tokens"]}, "source": source.describe(),
                "include": include, "exclude": exclude, **reader.options(), "sample": facts,
                "bad_rows": dict(stats.malformed), "damaged_files": stats.damaged_files,
                "tokenizers": tokenizers_version}
            save(tok, args.kind, out, record)
            loaded = Tokenizer(out)  # what training and data preparation will read
            if model_config is not None:
                model_config = replace(model_config, vocab_size=padded_vocab_size(loaded.vocab_size),
                                       bos_id=loaded.bos_id, eos_id=loaded.eos_id)
                model_config.save(out / MODEL_CONFIG)
            replace_folder(out, args.out_dir)
    except (DataError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.out_dir}: {args.kind} BPE, {loaded.vocab_size:,} pieces (BOS {loaded.bos_id}, EOS {loaded.eos_id}), "
          f"trained on {facts['documents']:,} documents ({facts['bytes']:,} bytes) of {len(names)} files")
    if model_config is not None:
        print(f"  model_config.json: {model_config.name} with vocab_size {model_config.vocab_size:,}")
    if stats.damaged_files or stats.malformed:
        print(f"  warning: {sum(stats.malformed.values())} bad rows, damaged files: {list(stats.damaged_files)}")


if __name__ == "__main__":
    main()
