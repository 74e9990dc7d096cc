"""Real English prose for `prepare_throughput.py`, and 32k-vocab tokenizers trained on it, built deterministically
from a Debian package (the machines reach package registries only, no dataset hub).

The prose is the Python 3.11 documentation's reST sources (`usr/share/doc/python3.11/html/_sources/**/*.rst.txt`
in the `python3.11-doc` package, about 11 MB): each file is cut into documents of whole paragraphs of at least
2,000 characters, written in SlimPajama's layout (`train/chunk1/prose_{i}.jsonl.zst`, `meta.redpajama_set_name`)
with the C-API reference under the skipped "RedPajamaGithub" set so the preset's skipping is exercised too.
Tokenizers (with --tokenizers):
  bpe32k     32,000-piece byte-level BPE tokenizer.json, by scripts/train_tokenizer.py
  llama2-sp  32,000-piece sentencepiece BPE model configured as Llama-2's tokenizer.model is (byte fallback,
             split digits, dummy prefix, no normalization, <unk>=0 <s>=1 </s>=2)
  llama2-hf  the same model converted by transformers to a `tokenizers` tokenizer.json (ids checked identical on
             the corpus: the run fails otherwise)

    apt-get download python3.11-doc        # python3.11-doc_3.11.2-6+deb12u8_all.deb (Debian 12)
    python benchmarks/prose_corpus.py python3.11-doc_*.deb --out /tmp/prose --tokenizers /tmp/prose-tok
    python benchmarks/prepare_throughput.py --sample /tmp/prose --repeat 1 \
        --tokenizer_dir data/tokenizer /tmp/prose-tok/bpe32k /tmp/prose-tok/llama2-sp /tmp/prose-tok/llama2-hf
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.data.formats import write_rows  # noqa: E402

SOURCES = "usr/share/doc/python3.11/html/_sources/"
DOC_CHARS = 2000
N_FILES = 8
VOCAB = 32000
LLAMA_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "add_eos_token": False}


def deb_members(deb: Path) -> dict[str, bytes]:
    """{path: bytes} of the .rst.txt sources in a .deb (an `ar` archive holding data.tar.*)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise SystemExit(f"error: {deb}: not a .deb (ar) archive")
    offset = 8
    while offset < len(raw):
        name, size = raw[offset:offset + 16].decode().strip().rstrip("/"), int(raw[offset + 48:offset + 58])
        body = raw[offset + 60:offset + 60 + size]
        offset += 60 + size + size % 2
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                return {m.name.lstrip("./"): tar.extractfile(m).read() for m in tar.getmembers()
                        if m.isfile() and SOURCES in m.name and m.name.endswith(".rst.txt")}
    raise SystemExit(f"error: {deb}: no data.tar member")


def documents(files: dict[str, bytes]) -> list[dict]:
    rows = []
    for name in sorted(files):
        set_name = "RedPajamaGithub" if "/c-api/" in name else "RedPajamaBook"
        doc: list[str] = []
        for paragraph in re.split(r"\n\s*\n", files[name].decode("utf-8")):
            doc.append(paragraph)
            if sum(map(len, doc)) >= DOC_CHARS:
                rows.append({"text": "\n\n".join(doc), "meta": {"redpajama_set_name": set_name}})
                doc = []
        if doc:
            rows.append({"text": "\n\n".join(doc), "meta": {"redpajama_set_name": set_name}})
    return rows


def train_tokenizers(corpus: Path, out: Path, texts: list[str], vocab_size: int = VOCAB) -> None:
    """bpe{vocab_size // 1000}k, llama2-sp and llama2-hf in `out`."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_tokenizer

    train_tokenizer.main(["--source_path", str(corpus), "--include", "train", "--set_field", "meta.redpajama_set_name",
                          "--skip_sets", "RedPajamaGithub", "--kind", "bytelevel", "--vocab_size", str(vocab_size),
                          "--sample_docs", "10000000", "--out_dir", str(out / f"bpe{vocab_size // 1000}k")])
    sp_dir, hf_dir = out / "llama2-sp", out / "llama2-hf"
    llama2_sentencepiece(texts, sp_dir, vocab_size)
    tokenizers_twin(sp_dir, hf_dir)
    n = same_ids(sp_dir, hf_dir, texts)
    print(f"{sp_dir} and {hf_dir}: identical ids on all {len(texts):,} documents ({n:,} tokens)")


def llama2_sentencepiece(texts: list[str], folder: Path, vocab_size: int) -> None:
    """A sentencepiece BPE model trained on `texts` with Llama-2's tokenizer.model trainer_spec (as it reads back
    from the published model), into `folder`/tokenizer.model."""
    import sentencepiece as spm

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "tokenizer"), model_type="bpe",
        vocab_size=vocab_size, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", add_dummy_prefix=True,
        character_coverage=0.99995, max_sentence_length=4192, split_by_unicode_script=True, split_by_whitespace=True,
        split_by_number=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, input_sentence_size=0,
        minloglevel=2)
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(LLAMA_CONFIG, indent=1) + "\n")


def tokenizers_twin(sp_dir: Path, hf_dir: Path) -> None:
    """`sp_dir`'s sentencepiece model as a `tokenizers` tokenizer.json in `hf_dir`. transformers converts the
    vocabulary and merges; the text handling is set as in Llama-2's published tokenizer.json (a "▁" before every
    text and for every space, no pre-tokenizer), which is sentencepiece's: recent transformers' conversion uses
    Metaspace(prepend_scheme="always"), which adds no "▁" before a text that starts with a space."""
    from transformers import LlamaTokenizerFast

    spec = json.loads(LlamaTokenizerFast.from_pretrained(str(sp_dir), from_slow=True).backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["model"]["unk_token"] = "<unk>"
    shutil.rmtree(hf_dir, ignore_errors=True)
    hf_dir.mkdir(parents=True)
    (hf_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False) + "\n")
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(LLAMA_CONFIG, indent=1) + "\n")


def same_ids(sp_dir: Path, hf_dir: Path, texts: list[str]) -> int:
    """The number of tokens of `texts` (EOS appended), which both folders' tokenizers encode alike; exits otherwise."""
    from lit_gpt.data.prepare import encode_one_core
    from lit_gpt.tokenizer import Tokenizer

    sp, hf = Tokenizer(sp_dir), Tokenizer(hf_dir)
    assert sp.backend == "sentencepiece" and hf.backend == "huggingface"
    a, b = encode_one_core(sp, texts), encode_one_core(hf, texts)
    differ = sum(x != y for x, y in zip(a, b))
    if differ:
        raise SystemExit(f"error: {hf_dir}: ids differ from {sp_dir}'s on {differ} of {len(texts)} documents")
    return sum(len(ids) + 1 for ids in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("deb", type=Path, help="python3.11-doc_*.deb (apt-get download python3.11-doc)")
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to write (SlimPajama layout)")
    parser.add_argument("--tokenizers", type=Path, help="also train the 32k tokenizers into this folder")
    parser.add_argument("--vocab_size", type=int, default=VOCAB, help="the tokenizers' vocabulary size (a rehearsal "
                        "on a small corpus needs a small one; the byte-level folder is named after it: bpe32k)")
    args = parser.parse_args()
    rows = documents(deb_members(args.deb))
    shutil.rmtree(args.out / "train", ignore_errors=True)
    per_file = -(-len(rows) // N_FILES)
    for i in range(N_FILES):
        write_rows(args.out / "train" / "chunk1" / f"prose_{i}.jsonl.zst", rows[i * per_file:(i + 1) * per_file])
    kept = [r["text"] for r in rows if r["meta"]["redpajama_set_name"] != "RedPajamaGithub"]
    print(f"{args.out}: {len(rows):,} documents ({sum(len(r['text']) for r in rows):,} characters), "
          f"{len(kept):,} outside the skipped set, in {N_FILES} files")
    if args.tokenizers:
        train_tokenizers(args.out, args.tokenizers, kept, args.vocab_size)


if __name__ == "__main__":
    main()
