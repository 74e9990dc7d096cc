"""lit <-> Hugging Face conversion, checkpoint loading from every layout, and the two convert scripts.

The reference is transformers' LlamaForCausalLM loaded with `from_pretrained` from the folders we write."""

import json
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lit_gpt import GPT, Config
from lit_gpt.checkpoint import consolidate, find_config, load_model, load_model_state
from lit_gpt.convert import hf_to_lit, lit_to_hf, load_hf_folder, parse_size, save_hf_folder
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.weights import copy_tokenizer_files, find_tokenizer_dir, save_lit_folder

ROOT = Path(__file__).resolve().parents[1]
TEXT = " ".join(f"The quick brown fox number {i} jumps over the lazy dog in year {1900 + i}." for i in range(300))
VOCAB = 100


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("spm")
    (d / "corpus.txt").write_text(TEXT.replace(". ", ".\n"))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"), vocab_size=VOCAB,
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
    (d / "corpus.txt").unlink()
    (d / "tokenizer.vocab").unlink()
    return d


def random_gpt(seed=0, **overrides) -> GPT:
    """A tiny GPT with random weights, norms included (so a swapped norm would show in the logits)."""
    torch.manual_seed(seed)
    model = GPT(Config.from_name("tiny", vocab_size=VOCAB, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def run_main(name, *args):
    """A script's main() in this process (no interpreter start-up); SystemExit propagates."""
    import runpy

    runpy.run_path(str(ROOT / "scripts" / name))["main"]([str(a) for a in args])


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


SHAPES = {
    "mha": dict(n_query_groups=4),
    "gqa": dict(n_query_groups=2),
    "mqa_tied": dict(n_query_groups=1, tie_embeddings=True),
    "gqa_tied_3layers": dict(n_query_groups=2, tie_embeddings=True, n_layer=3, intermediate_size=64),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_transformers_llama(shape, tmp_path, spm_dir):
    from transformers import AutoModelForCausalLM

    model = random_gpt(**SHAPES[shape])
    # a small shard size so the sharded index path is what transformers loads
    save_hf_folder(model.state_dict(), model.config, tmp_path / "hf", tokenizer_dir=spm_dir, max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    idx = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(idx).logits - model(idx)).abs().max().item()
    assert diff <= 1e-4, diff


def test_hf_to_lit_to_hf_round_trip_is_bit_exact(tmp_path, spm_dir, capsys):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    hf = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p))
    hf.save_pretrained(tmp_path / "orig")
    expected = load_file(str(tmp_path / "orig" / "model.safetensors"))

    run_main("convert_hf_to_lit.py", tmp_path / "orig", tmp_path / "lit")
    assert sorted(p.name for p in (tmp_path / "lit").iterdir()) == ["checksums.json", "lit_model.pth",
                                                                   "model_config.json"]
    run_main("convert_lit_to_hf.py", tmp_path / "lit", tmp_path / "back", "--tokenizer_dir", spm_dir)
    stdout = capsys.readouterr().out
    assert "reading" in stdout and "wrote" in stdout and "done in" in stdout

    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert back.keys() == expected.keys()
    for k in expected:
        assert back[k].dtype == expected[k].dtype and torch.equal(back[k], expected[k]), k
    # the lit model itself computes what the HF model computes
    lit = load_model(tmp_path / "lit")
    idx = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert (lit(idx) - hf.eval()(idx).logits).abs().max() <= 1e-4


def test_tied_hf_lm_head_is_dropped_when_equal_and_refused_when_different():
    model = random_gpt(tie_embeddings=True)
    hf = lit_to_hf(model.state_dict(), model.config)
    assert "lm_head.weight" not in hf
    lit = hf_to_lit({**hf, "lm_head.weight": hf["model.embed_tokens.weight"].clone()}, model.config)
    assert lit["lm_head.weight"] is lit["embed.weight"]
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        hf_to_lit({**hf, "lm_head.weight": torch.zeros_like(hf["model.embed_tokens.weight"])}, model.config)


def test_bf16_export_and_tokenizer(tmp_path, spm_dir):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = random_gpt()
    save_lit_folder(model.state_dict(), model.config, tmp_path / "lit", tokenizer_dir=spm_dir)
    run_main("convert_lit_to_hf.py", tmp_path / "lit", tmp_path / "hf", "--dtype", "bfloat16")
    out = tmp_path / "hf"
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 1, "eos_token_id": 2}
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    hf = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}

    lit_tok, hf_tok = Tokenizer(spm_dir), AutoTokenizer.from_pretrained(out)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id) == (1, 2)
    for text in ["the lazy dog", "The quick brown fox number 17 jumps.", "  two  spaces\nand a newline  ",
                 "Hello World ünïcode 1234567", "ｆｕｌｌ width"]:
        ids = lit_tok.encode(text, bos=True)
        assert hf_tok.encode(text) == ids, text
        if 0 not in ids:  # sentencepiece renders <unk> as " ⁇ ", transformers skips it
            assert hf_tok.decode(ids, skip_special_tokens=True) == lit_tok.decode(ids[1:])


# ---- the exported tokenizer encodes like lit_gpt's, for every tokenizer form ---------------------------------------
# texts where pipelines part ways: a dummy prefix before leading whitespace, whitespace runs, byte fallback, scripts
# outside Latin, special-token text inside a document
TRICKY = [" A single leading space.", "  Two  spaces\n\nand\ttabs\t ", "trailing   ", "\n", "\t", "中文，日本語、한국어",
          "مرحبا بالعالم", "नमस्ते दुनिया", "emoji 😀👍🏽🇺🇳!", "</s> <s> <unk> inside text", "mixed  ١٢٣ ½ ｆｕｌｌ  "]
LLAMA = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
TOKENIZER_FORMS = {  # name -> (tokenizer.json kind or None, with tokenizer.model, tokenizer_config.json or None)
    "sentencepiece unigram (tokenizer.model only)": ("unigram", True, None),
    "sentencepiece BPE (bundled, LlamaTokenizer config)": ("bundled", True, None),
    "llama json + LlamaTokenizer": ("llama", False, {**LLAMA, "tokenizer_class": "LlamaTokenizer"}),
    "llama json + LlamaTokenizer legacy": ("llama", False, {**LLAMA, "tokenizer_class": "LlamaTokenizer",
                                                             "legacy": True, "add_prefix_space": True}),
    "llama json + LlamaTokenizerFast no legacy, no prefix space": (
        "llama", False, {**LLAMA, "tokenizer_class": "LlamaTokenizerFast", "legacy": False, "add_prefix_space": False}),
    "metaspace json + LlamaTokenizerFast no prefix space": (
        "metaspace", False, {**LLAMA, "tokenizer_class": "LlamaTokenizerFast", "add_prefix_space": False}),
    "llama json only": ("llama", False, None),
    "llama json + tokenizer.model + LlamaTokenizer no legacy": (
        "llama", True, {**LLAMA, "tokenizer_class": "LlamaTokenizer", "legacy": False}),
    "byte-level BPE, <s> </s>": ("bytelevel", False, LLAMA),
    "byte-level BPE, GPT2Tokenizer": ("gpt2", False, {"tokenizer_class": "GPT2Tokenizer",
                                                      "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
}


@pytest.fixture(scope="module")
def tokenizer_jsons(tmp_path_factory, spm_dir):
    """A small sentencepiece BPE model (byte fallback, like Llama-2's) and tokenizer.json files of every kind."""
    import sentencepiece as spm
    from tokenizers import Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, processors, trainers

    from lit_gpt.hf_tokenizer import sentencepiece_to_tokenizers

    d = tmp_path_factory.mktemp("tokenizers")
    model = d / "tokenizer.model"
    (d / "corpus.txt").write_text(TEXT.replace(". ", ".\n"))
    spm.SentencePieceTrainer.train(input=str(d / "corpus.txt"), model_prefix=str(d / "tokenizer"),
                                   model_type="bpe", vocab_size=400, byte_fallback=True, bos_id=1, eos_id=2,
                                   unk_id=0, pad_id=-1, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", minloglevel=2)
    files = {"unigram": spm_dir / "tokenizer.model", "bundled": ROOT / "data" / "tokenizer" / "tokenizer.model",
             "model": model}
    llama = sentencepiece_to_tokenizers(model)  # Llama-2's tokenizer.json: the dummy prefix in the normalizer
    llama.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    llama.pre_tokenizer = None
    llama.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    llama.save(str(d / "llama.json"))
    llama.normalizer = None  # newer conversions: a Metaspace pre-tokenizer prepends "▁" to the first word only
    llama.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    llama.save(str(d / "metaspace.json"))
    for name, specials in (("bytelevel", ["<unk>", "<s>", "</s>"]), ("gpt2", ["<|endoftext|>"])):
        tok = HF(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder, tok.post_processor = decoders.ByteLevel(), processors.ByteLevel(trim_offsets=False)
        tok.train_from_iterator([TEXT + " ".join(TRICKY)], trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.save(str(d / f"{name}.json"))
    files.update({name: d / f"{name}.json" for name in ("llama", "metaspace", "bytelevel", "gpt2")})
    return files


@pytest.mark.parametrize("form", TOKENIZER_FORMS)
def test_hf_export_tokenizes_like_lit_gpt(form, tokenizer_jsons, tmp_path):
    """AutoTokenizer on the export gives lit_gpt's ids (those the training data was prepared with) on every text, with
    BOS first by default, whichever form the tokenizer folder has; lit_gpt reads the export back the same."""
    from transformers import AutoTokenizer

    kind, with_model, tokenizer_config = TOKENIZER_FORMS[form]
    src = tmp_path / "tokenizer"
    src.mkdir()
    if kind in ("unigram", "bundled"):
        (src / "tokenizer.model").write_bytes(tokenizer_jsons[kind].read_bytes())
        if kind == "bundled":
            copy_tokenizer_files(ROOT / "data" / "tokenizer", src)
    else:
        (src / "tokenizer.json").write_bytes(tokenizer_jsons[kind].read_bytes())
        if with_model:
            (src / "tokenizer.model").write_bytes(tokenizer_jsons["model"].read_bytes())
    if tokenizer_config:
        (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    model = random_gpt()
    save_hf_folder(model.state_dict(), model.config, tmp_path / "hf", tokenizer_dir=src)

    lit, exported, hf = Tokenizer(src), Tokenizer(tmp_path / "hf"), AutoTokenizer.from_pretrained(tmp_path / "hf")
    if lit.bos_id is not None:
        assert (exported.bos_id, exported.eos_id) == (lit.bos_id, lit.eos_id)
    assert (hf.bos_token_id, hf.eos_token_id) == (exported.bos_id, exported.eos_id)
    bos = [] if exported.bos_id is None else [exported.bos_id]
    for text in TRICKY:
        if "</s>" in text and kind == "unigram":  # the one known difference (see hf_tokenizer.SPECIAL_PIECES_TEXT)
            continue
        ids = lit.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf(text)["input_ids"] == bos + ids, text
        assert exported.encode(text) == ids, text


def test_hf_export_refuses_a_tokenizer_that_disagrees(tmp_path, spm_dir, monkeypatch):
    """A converted tokenizer that encodes differently (here: no dummy prefix) fails the export with one line naming
    the tokenizer and the first text that differs; nothing is left behind."""
    from tokenizers import normalizers

    import lit_gpt.hf_tokenizer as hf_tokenizer

    def without_dummy_prefix(path):
        tok = convert_spm(path)
        tok.normalizer = normalizers.Replace(" ", "▁")
        return tok

    convert_spm = hf_tokenizer.sentencepiece_to_tokenizers
    monkeypatch.setattr(hf_tokenizer, "sentencepiece_to_tokenizers", without_dummy_prefix)
    model = random_gpt()
    save_lit_folder(model.state_dict(), model.config, tmp_path / "lit", tokenizer_dir=spm_dir)
    with pytest.raises(SystemExit) as e:
        run_main("convert_lit_to_hf.py", tmp_path / "lit", tmp_path / "hf")
    assert re.fullmatch(re.escape(f"error: {tmp_path / 'lit' / 'tokenizer.model'}: the exported tokenizer disagrees "
                                  "with lit_gpt's: AutoTokenizer encodes '  Two leading spaces' as [3, 3, ")
                        + r"[\d, ]+\], lit_gpt as \[3, [\d, ]+\]", str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lit"]


def test_load_model_state_every_layout(tmp_path, spm_dir):
    model = random_gpt(tie_embeddings=True)
    expected = model.state_dict()
    config = model.config

    def same(sd):
        return sd.keys() == expected.keys() and all(torch.equal(sd[k], v) for k, v in expected.items())

    # a lit checkpoint folder
    save_lit_folder(expected, config, tmp_path / "lit", tokenizer_dir=spm_dir)
    assert same(load_model_state(tmp_path / "lit")) and find_config(tmp_path / "lit") == config
    # a raw state dict file
    torch.save(expected, tmp_path / "raw.pth")
    assert same(load_model_state(tmp_path / "raw.pth"))
    # training out_dir with two step folders holding state.pth (torch.compile names); the latest is picked
    out = tmp_path / "train"
    for step in (500, 1000):
        d = out / "checkpoints" / f"step-{step:08d}"
        d.mkdir(parents=True)
        weights = {f"_orig_mod.{k}": (v if step == 1000 else torch.zeros_like(v)) for k, v in expected.items()}
        # the entries the trainer saves beside the model must load under weights_only too
        torch.save({"model": weights, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "step": step,
                    "tokens_seen": step * 64, "rng": [{"torch": torch.get_rng_state(), "python": random.getstate()}],
                    "train_dataloader": [{"epoch": 0, "files": ["a.bin"]}], "model_config": config.to_dict(),
                    "train_args": {"out_dir": str(out)}}, d / "state.pth")
        config.save(d / "model_config.json")
    (out / "tokenizer.model").write_bytes((spm_dir / "tokenizer.model").read_bytes())
    assert same(load_model_state(out)) and same(load_model_state(out / "checkpoints"))
    assert find_tokenizer_dir(out / "checkpoints" / "step-00001000") == out
    # consolidate a step into a lit folder, then load it as a model
    consolidate(out, tmp_path / "consolidated")
    assert sorted(p.name for p in (tmp_path / "consolidated").iterdir()) == [
        "checksums.json", "lit_model.pth", "model_config.json", "tokenizer.model", "train_metadata.json"]
    # the training progress travels with it, for the model card
    assert json.loads((tmp_path / "consolidated" / "train_metadata.json").read_text()) == {
        "step": 1000, "tokens_seen": 64000}
    loaded = load_model(tmp_path / "consolidated", dtype=torch.bfloat16)
    assert loaded.lm_head.weight is loaded.embed.weight and loaded.embed.weight.dtype == torch.bfloat16
    # an HF folder reads back as lit weights
    save_hf_folder(expected, config, tmp_path / "hf")
    assert same(load_model_state(tmp_path / "hf")) and load_hf_folder(tmp_path / "hf")[0].n_layer == config.n_layer


def test_load_model_names_the_mismatch(tmp_path):
    model = random_gpt()
    save_lit_folder(model.state_dict(), model.config, tmp_path / "ckpt")
    Config.from_name("tiny", vocab_size=VOCAB, n_query_groups=4).save(tmp_path / "ckpt" / "model_config.json")
    (tmp_path / "ckpt" / "checksums.json").unlink()  # a hand-assembled folder: its checksums would flag the config
    with pytest.raises(ValueError) as e:
        load_model(tmp_path / "ckpt")
    assert str(e.value) == (f"{tmp_path / 'ckpt'}: weights do not match config 'tiny': blocks.0.attn.qkv.weight "
                            "has shape (64, 32), config expects (96, 32)")
    missing = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    with pytest.raises(ValueError, match=r"blocks.1.attn_norm.weight is missing \(and 5 more\)"):
        lit_to_hf(missing, model.config)


def test_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    import lit_gpt.convert as convert

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(convert, "write_hf_tokenizer", boom)
    model = random_gpt()
    with pytest.raises(OSError, match="disk full"):
        save_hf_folder(model.state_dict(), model.config, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        save_hf_folder(model.state_dict(), model.config, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "precious"


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000 and parse_size("1GiB") == 2**30 and parse_size("500 MB") == 500_000_000
    assert parse_size("4096") == 4096 and parse_size(7) == 7
    with pytest.raises(ValueError, match="invalid size"):
        parse_size("lots")


def test_scripts_bad_input(tmp_path, capsys):
    model = random_gpt()
    save_lit_folder(model.state_dict(), model.config, tmp_path / "lit")
    save_hf_folder(model.state_dict(), model.config, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    out = tmp_path / "out"
    cases = [  # (script, args, expected texts in the one-line error); run side by side to save start-up time
        ("convert_lit_to_hf.py", [tmp_path / "missing", out], ["missing: checkpoint not found"]),
        ("convert_lit_to_hf.py", [tmp_path / "lit", out, "--config", "debug"],
         ["weights do not match config 'debug'", "embed.weight has shape (100, 32), config expects (4096, 128)"]),
        ("convert_hf_to_lit.py", [tmp_path / "hf", out], [f"{weights}: corrupt or truncated safetensors file"]),
        ("convert_hf_to_lit.py", [tmp_path / "lit", tmp_path / "full"],
         [f"{tmp_path / 'full'}: output folder exists and is not empty (pass --overwrite"]),
    ]
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *map(str, args)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for script, args, _ in cases]
    for proc, (_, _, needles) in zip(procs, cases):
        stdout, stderr = proc.communicate(timeout=120)
        assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), *needles)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["full", "hf", "lit"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]

    # the same checks in-process for the remaining cases (SystemExit carries the one-line message)
    with pytest.raises(SystemExit, match="unknown config name 'no-such-model'"):
        run_main("convert_lit_to_hf.py", tmp_path / "lit", out, "--config", "no-such-model")
    with pytest.raises(SystemExit, match="output folder exists and is not empty"):
        run_main("convert_lit_to_hf.py", tmp_path / "lit", tmp_path / "full")
    assert not out.exists() and [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    run_main("convert_lit_to_hf.py", tmp_path / "lit", tmp_path / "full", "--overwrite")
    assert not (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "model.safetensors").is_file()


FSDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import ModelParallelStrategy
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    from lit_gpt import GPT, Config

    def parallelize(model, device_mesh):
        for block in model.blocks:
            fully_shard(block, mesh=device_mesh["data_parallel"])
        fully_shard(model, mesh=device_mesh["data_parallel"])
        return model

    out = sys.argv[1]
    torch.set_num_threads(1)
    fabric = Fabric(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(parallelize))
    fabric.launch()
    fabric.seed_everything(0)
    config = Config.from_name("tiny", vocab_size=100, n_layer=2, tie_embeddings=False)
    with fabric.init_module(empty_init=False):
        model = GPT(config)
    model = fabric.setup(model)
    opt = fabric.setup_optimizers(torch.optim.AdamW(model.parameters(), lr=1e-2))
    x = torch.randint(0, 100, (2, 16))
    loss = model(x, targets=x)  # one sharded training step so the saved weights differ from the init
    fabric.backward(loss)
    opt.step()
    fabric.save(f"{out}/checkpoints/step-00000001/state", {"model": model, "optimizer": opt, "step": 1})
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if fabric.global_rank == 0:
        torch.save(full, f"{out}/reference.pth")
        config.save(f"{out}/checkpoints/step-00000001/model_config.json")
""")


@pytest.mark.slow
def test_sharded_fsdp2_checkpoint_consolidates_on_cpu(tmp_path, capfd):
    script = tmp_path / "train_fsdp.py"
    script.write_text(FSDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    assert len(list((step / "state").glob("*.distcp"))) == 2  # really one shard file per rank
    reference = torch.load(tmp_path / "run" / "reference.pth")
    state = load_model_state(tmp_path / "run")
    assert state.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(state[k], v), k
    assert find_config(step).n_layer == 2
    consolidate(step, tmp_path / "lit")
    model = load_model(tmp_path / "lit")
    assert torch.equal(model.blocks[1].mlp.down.weight, reference["blocks.1.mlp.down.weight"])
    run_main("consolidate.py", tmp_path / "run")  # the CLI: sharded newest step -> run/consolidated
    assert "(step 1): sharded FSDP checkpoint, 2 shards" in capfd.readouterr().out
    consolidated = load_model_state(tmp_path / "run" / "consolidated")
    assert all(torch.equal(consolidated[k], v) for k, v in reference.items())

    # damaged shards or metadata: one clear error, no tracebacks logged on the way
    capfd.readouterr()
    shard = sorted((step / "state").glob("*.distcp"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{step / 'state'}: unreadable distributed checkpoint"):
        load_model_state(step)
    (step / "state" / ".metadata").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"unreadable distributed checkpoint, .metadata is corrupt"):
        load_model_state(step)
    assert "Traceback" not in capfd.readouterr().err


def test_consolidate_script(tmp_path, spm_dir):
    """scripts/consolidate.py on a training out_dir (single-file state.pth with optimizer state): the newest step
    becomes out_dir/consolidated with the exact weights, config, tokenizer and progress; one-line errors otherwise."""
    model = random_gpt(3)
    run = tmp_path / "run"
    for step, seed in ((2, 1), (4, 3)):  # two checkpoints: the newest one is consolidated
        step_dir = run / "checkpoints" / f"step-{step:08d}"
        step_dir.mkdir(parents=True)
        weights = random_gpt(seed).state_dict()
        opt = torch.optim.AdamW(model.parameters())
        torch.save({"model": weights, "optimizer": opt.state_dict(), "step": step, "tokens_seen": step * 512},
                   step_dir / "state.pth")
        model.config.save(step_dir / "model_config.json")
    copy_tokenizer_files(spm_dir, run)
    script = [sys.executable, str(ROOT / "scripts" / "consolidate.py")]
    proc = subprocess.run([*script, run], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = run / "consolidated"
    assert f"reading {run / 'checkpoints' / 'step-00000004'} (step 4, 2,048 tokens seen): single-file" in proc.stdout
    assert f"wrote {out}: checksums.json, lit_model.pth (" in proc.stdout and "tokenizer.model" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checksums.json", "lit_model.pth", "model_config.json",
                                                     "tokenizer.model", "train_metadata.json"]
    loaded = load_model(out)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert json.loads((out / "train_metadata.json").read_text()) == {"step": 4, "tokens_seen": 2048}
    assert set(torch.load(out / "lit_model.pth", weights_only=True)) == set(model.state_dict())  # no optimizer

    # an existing output is refused (and left alone) unless --overwrite; a given step and output folder
    before = (out / "lit_model.pth").read_bytes()
    with pytest.raises(SystemExit, match=f"^error: {out}: output folder exists and is not empty \\(pass --overwrite"):
        run_main("consolidate.py", run)
    assert (out / "lit_model.pth").read_bytes() == before
    run_main("consolidate.py", run / "checkpoints" / "step-00000002" / "state.pth", out, "--overwrite")
    expected = random_gpt(1).state_dict()
    assert all(torch.equal(load_model(out).state_dict()[k], v) for k, v in expected.items())
    # missing checkpoints: exit status 1, one line, no traceback
    proc = subprocess.run([*script, tmp_path / "nope"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert_one_line_error(proc, f"error: {tmp_path / 'nope'}: checkpoint not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=f"^error: {tmp_path / 'empty'}: no checkpoint in this folder"):
        run_main("consolidate.py", tmp_path / "empty")


def test_lit_folder_disk_full_is_one_line(tmp_path, monkeypatch):
    """The disk fills up while lit_model.pth is written, and torch's zip writer loses the errno on the way ('unexpected
    pos'): one OSError line saying the disk is full and how much the folder needs, nothing left behind. A disk already
    too full is refused before writing."""
    import itertools
    import shutil

    from lit_gpt.integrity import DiskFullError

    model = random_gpt()
    usage = shutil.disk_usage(tmp_path)
    frees = itertools.chain([usage.free], itertools.repeat(1000))  # enough before the write, 1000 bytes after it

    def fill_disk(obj, f):
        Path(f).write_bytes(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", fill_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=next(frees)))
    with pytest.raises(DiskFullError) as e:
        save_lit_folder(model.state_dict(), model.config, tmp_path / "lit")
    assert str(e.value) == f"{tmp_path}: disk full: lit needs about 0.12 MB, 0.00 MB free there"
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(DiskFullError, match="disk full: hf needs about"):
        save_hf_folder(model.state_dict(), model.config, tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []
