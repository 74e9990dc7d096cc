import json

import numpy as np
import pytest

from lit_gpt.config import Config, padded_vocab_size
from lit_gpt.tokenizer import Tokenizer
from tests.test_convert import run_main
from tests.test_formats import write
from tests.test_prepare import SAMPLE, output, read_rows
from tests.test_trainer import run, tiny_args

TEXTS = ("Hello world", "", " ", "  two leading spaces\n\nand\ttabs", "emoji 😀 and 中文字符 ünïcödé",
         "a literal <0x41> and </s> or <|endoftext|>", "def f(x):\n    return x ** 2\n")


def train_tokenizer(out, *extra):
    run_main("train_tokenizer.py", "--source_path", SAMPLE, "--include", "train", "--sample_docs", 150,
             "--out_dir", out, *extra)
    return Tokenizer(out)


@pytest.mark.parametrize("kind, specials", [("bytelevel", (0, 0)), ("llama", (1, 2))])
def test_tokenizer_is_deterministic_and_loads_alike_in_lit_gpt_and_transformers(kind, specials, tmp_path):
    from transformers import AutoTokenizer

    tok = train_tokenizer(tmp_path / "a", "--kind", kind, "--vocab_size", 700)
    train_tokenizer(tmp_path / "b", "--kind", kind, "--vocab_size", 700)
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (tmp_path / "b/tokenizer.json").read_bytes()
    assert tok.vocab_size == 700 and (tok.bos_id, tok.eos_id) == specials
    record = json.loads((tmp_path / "a/training.json").read_text())
    assert record["sample"]["documents"] == 150 and record["kind"] == kind
    hf = AutoTokenizer.from_pretrained(tmp_path / "a")
    for text in TEXTS:
        assert tok.encode(text) == hf(text)["input_ids"], text
    for text in TEXTS[:5]:
        assert tok.decode(tok.encode(text)) == text
    if kind == "llama":  # byte fallback: no unknown pieces, and the byte pieces are no added tokens
        assert tok.processor.token_to_id("<0xF0>") is not None and 0 not in tok.encode(TEXTS[4])
        assert tok.encode("<0x41>") != [tok.processor.token_to_id("<0x41>")]


def test_round_trip_train_tokenizer_prepare_train_export(tmp_path):
    """Own tokenizer -> parquet corpus prepared with it -> 3 steps of a tiny model whose vocab follows from it ->
    Hugging Face export: AutoTokenizer gives the ids the data was prepared with."""
    from transformers import AutoTokenizer

    tok = train_tokenizer(tmp_path / "tok", "--kind", "bytelevel", "--vocab_size", 600, "--model_name", "tiny")
    config = Config.from_file(tmp_path / "tok/model_config.json")
    assert config.vocab_size == padded_vocab_size(600) == 640 and (config.bos_id, config.eos_id) == (0, 0)
    rows = [{"text": r["text"]} for r in read_rows(SAMPLE / "validation/chunk1/example_holdout_0.jsonl.zst")]
    write(tmp_path / "corpus/part-0.parquet", rows)
    run_main("prepare_data.py", "--source_path", tmp_path / "corpus", "--tokenizer_dir", tmp_path / "tok",
             "--destination", tmp_path / "data", "--num_workers", 1, "--chunk_size", 4096)
    tokens = output(tmp_path / "data", "train")[0]
    assert np.array_equal(tokens, np.concatenate([tok.encode(r["text"], eos=True) for r in rows]))
    run(tiny_args(tmp_path / "data", tmp_path / "out", "--max_steps", "3", "--model_config",
                  str(tmp_path / "tok/model_config.json"), "--tokenizer_dir", str(tmp_path / "tok")))
    run_main("convert_lit_to_hf.py", tmp_path / "out", tmp_path / "hf")
    hf = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in TEXTS + (rows[0]["text"][:2000],):
        assert hf(text)["input_ids"] == tok.encode(text, bos=True), text


def test_a_tokenizer_larger_than_the_model_is_one_line(tmp_path):
    train_tokenizer(tmp_path / "tok", "--vocab_size", 600)
    with pytest.raises(SystemExit) as e:
        run(tiny_args(tmp_path / "data", tmp_path / "out", "--tokenizer_dir", str(tmp_path / "tok")))
    assert e.value.code.endswith("600 pieces, more than the model's vocab_size 512; give a --model_config with "
                                 "vocab_size 640 (scripts/train_tokenizer.py --model_name writes one)")
