import json

import pytest

from lit_gpt.tokenizer import Tokenizer

TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog in year {1900 + i}." for i in range(300))


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text(TEXT.replace(". ", ".\n"))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=100,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    return d


def test_sentencepiece(spm_dir):
    tok = Tokenizer(spm_dir)
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.backend) == (1, 2, 100, "sentencepiece")
    ids = tok.encode("the lazy dog", bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.decode(ids[1:-1]) == "the lazy dog"
    assert tok.encode_batch(["the lazy dog"]) == [ids[1:-1]]


def save_bpe_json(folder):
    """A byte-level BPE tokenizer.json with <unk>, <s>, </s> as ids 0, 1, 2."""
    from tokenizers import Tokenizer as HF, models, pre_tokenizers, trainers, decoders

    hf = HF(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    hf.save(str(folder / "tokenizer.json"))


def test_huggingface_json(tmp_path):
    save_bpe_json(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}}))
    tok = Tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.backend) == (1, 2, "huggingface")
    ids = tok.encode("the lazy dog", eos=True)
    assert ids[-1] == 2 and tok.decode(ids[:-1]) == "the lazy dog"


def test_null_special_token_means_none(tmp_path):
    """tokenizer_config.json's `"bos_token": null` says there is no BOS (as transformers reads it); config.json's ids
    count only for the keys tokenizer_config.json does not have (the HF export writes null for a missing BOS)."""
    save_bpe_json(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None}))
    tok = Tokenizer(tmp_path)
    assert (tok.bos_id, tok.eos_id) == (None, 2)
    with pytest.raises(ValueError, match="tokenizer has no BOS token"):
        tok.encode("the", bos=True)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        Tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable sentencepiece model"):
        Tokenizer(tmp_path)


def test_folder_with_both_files_uses_sentencepiece(spm_dir, tmp_path):
    """Where a folder holds a Llama-2 tokenizer.model and its tokenizer.json twin (identical ids), the sentencepiece
    one is used: it encodes ~1.5x faster (benchmarks/RESULTS.md, data preparation throughput)."""
    (tmp_path / "tokenizer.model").write_bytes((spm_dir / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer.json").write_text("{}")  # never read
    assert Tokenizer(tmp_path).backend == "sentencepiece"
