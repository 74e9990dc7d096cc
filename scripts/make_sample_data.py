"""Builds the bundled sample corpus (SlimPajama layout) and its 4096-piece sentencepiece tokenizer.

Everything comes from text already on this machine under a clear license (see data/README.md):

  RedPajamaWikipedia      Python's reference documentation topics (pydoc_data.topics)      PSF-2.0
  RedPajamaBook           docstrings of the Python standard library, one document a module  PSF-2.0
  RedPajamaStackExchange  docstrings of numpy, one document a module                        BSD-3-Clause
  RedPajamaArXiv          the license texts in /usr/share/common-licenses                   verbatim, as each permits
  RedPajamaGithub         Python standard library source files (skipped by default)         PSF-2.0

The set names only mimic SlimPajama's so that --skip_sets and the per-set summary have something real to work on.

    python scripts/make_sample_data.py --out data
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import random
import sys
import sysconfig
import zlib
from pathlib import Path

import zstandard

from lit_gpt.utils import atomic_write, replace_folder

LICENSES_DIR = Path("/usr/share/common-licenses")
GITHUB_CHAR_BUDGET = 1_200_000  # keeps the code set (skipped by default) small
SPLIT_FILES = {"train": {"chunk1": 3, "chunk2": 3}, "validation": {"chunk1": 2}, "test": {"chunk1": 2}}


def module_docstrings(path: Path, title: str) -> str:
    """One document: a module's docstring followed by those of its classes and functions, with their names."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{title}\n\n{doc}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                parts.append(f"{node.name}\n\n{doc}")
    return "\n\n".join(parts) if len(parts) > 1 or (parts and len(parts[0]) > 200) else ""


def python_files(root: Path) -> list[Path]:
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__"}
    return [p for p in sorted(root.rglob("*.py")) if not skip.intersection(p.relative_to(root).parts)]


def collect_documents() -> list[dict]:
    import numpy
    from pydoc_data.topics import topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []

    def add(text: str, set_name: str, doc_id: str) -> None:
        if text.strip():
            docs.append({"text": text, "meta": {"redpajama_set_name": set_name}, "id": doc_id})

    for name in sorted(topics):
        add(topics[name].strip(), "RedPajamaWikipedia", f"topic:{name}")
    for path in python_files(stdlib):
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
        add(module_docstrings(path, module), "RedPajamaBook", f"stdlib:{module}")
    numpy_root = Path(numpy.__file__).parent
    for path in python_files(numpy_root):
        module = "numpy." + ".".join(path.relative_to(numpy_root).with_suffix("").parts).removesuffix(".__init__")
        add(module_docstrings(path, module.removesuffix(".")), "RedPajamaStackExchange", f"numpy:{module}")
    if LICENSES_DIR.is_dir():
        for path in sorted(LICENSES_DIR.iterdir()):
            if path.is_file() and not path.is_symlink():
                add(path.read_text(encoding="utf-8", errors="replace"), "RedPajamaArXiv", f"license:{path.name}")
    # every k-th source file, so the code set is varied but small
    sources = python_files(stdlib)
    budget = 0
    for path in sources[:: max(1, len(sources) // 150)]:
        text = path.read_text(encoding="utf-8", errors="replace")
        if budget + len(text) > GITHUB_CHAR_BUDGET:
            continue
        budget += len(text)
        add(text, "RedPajamaGithub", f"source:{path.relative_to(stdlib)}")
    return docs


def split_of(doc_id: str) -> str:
    """Stable split from a hash of the document id: ~4% validation, ~4% test, the rest train."""
    bucket = zlib.crc32(doc_id.encode()) % 100
    return "validation" if bucket < 4 else "test" if bucket < 8 else "train"


def write_jsonl_zst(path: Path, rows: list[dict]) -> None:
    data = "".join(json.dumps({"text": r["text"], "meta": r["meta"]}, ensure_ascii=False) + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(zstandard.ZstdCompressor(level=19).compress(data.encode("utf-8")))


def write_corpus(docs: list[dict], root: Path) -> dict[str, list[dict]]:
    by_split = {split: [d for d in docs if split_of(d["id"]) == split] for split in SPLIT_FILES}
    for split, rows in by_split.items():
        random.Random(f"sample-{split}").shuffle(rows)  # mix the sets inside every file
        names = [(chunk, i) for chunk, n in SPLIT_FILES[split].items() for i in range(n)]
        kind = "train" if split == "train" else "holdout"
        for k, (chunk, i) in enumerate(names):
            write_jsonl_zst(root / split / chunk / f"example_{kind}_{i}.jsonl.zst", rows[k :: len(names)])
    return by_split


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    def lines():
        for text in texts:
            for line in text.splitlines():
                if line.strip():
                    yield line

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,  # Llama-2 conventions
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        max_sentence_length=16384,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / "tokenizer.model", "wb") as f:
        f.write(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 2048,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data"), help="writes <out>/sample_slimpajama and <out>/tokenizer")
    parser.add_argument("--vocab_size", type=int, default=4096, help="tokenizer vocabulary (4096 matches Config 'debug')")
    args = parser.parse_args()

    docs = collect_documents()
    tmp = args.out / f"sample_slimpajama.tmp-{os.getpid()}"
    by_split = write_corpus(docs, tmp)
    final = args.out / "sample_slimpajama"
    replace_folder(tmp, final)
    train_texts = [d["text"] for d in by_split["train"] if d["meta"]["redpajama_set_name"] != "RedPajamaGithub"]
    train_tokenizer(train_texts, args.out / "tokenizer", args.vocab_size)

    for split, rows in by_split.items():
        sets = {}
        for r in rows:
            name = r["meta"]["redpajama_set_name"]
            sets[name] = sets.get(name, 0) + len(r["text"])
        print(f"{split}: {len(rows)} docs, " + ", ".join(f"{k} {v / 1e6:.2f}M chars" for k, v in sorted(sets.items())))
    size = sum(p.stat().st_size for p in final.rglob("*.zst"))
    print(f"wrote {final} ({size / 1e6:.2f} MB compressed) and {args.out / 'tokenizer'}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ImportError) as e:
        sys.exit(f"error: {e}")
