import json

import pytest
import torch

from lit_gpt import GPT, Config
from lit_gpt.config import configs


@pytest.mark.parametrize(
    "name, expected_millions",
    [("MicroLlama-300M", 304.6), ("TinyLlama-1.1B", 1100.0), ("TinyLlama-120M", 121.1), ("smol-llama-360M", 361.8)],
)
def test_seed_param_counts(name, expected_millions):
    assert Config.from_name(name).num_params() / 1e6 == pytest.approx(expected_millions, abs=0.1)


@pytest.mark.parametrize("name", ["tiny", "debug"])
@pytest.mark.parametrize("tied", [False, True])
def test_num_params_matches_model(name, tied):
    config = Config.from_name(name, tie_embeddings=tied)
    with torch.device("meta"):
        model = GPT(config)
    assert sum(p.numel() for p in model.parameters()) == config.num_params()


def test_seed_shapes():
    c = Config.from_name("MicroLlama-300M")
    assert (c.n_layer, c.n_embd, c.n_head, c.n_query_groups, c.intermediate_size) == (12, 1024, 16, 4, 5632)
    assert (c.norm_eps, c.rope_base, c.tie_embeddings, c.bos_id, c.eos_id) == (1e-5, 10000.0, False, 1, 2)
    assert Config.from_name("smol-llama-360M").tie_embeddings


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown config name 'nope'"):
        Config.from_name("nope")


def test_hf_round_trip(tmp_path):
    for config in configs.values():
        (tmp_path / "config.json").write_text(json.dumps(config.to_hf()))
        assert Config.from_hf(tmp_path, name=config.name) == config


def test_from_hf_litellama_style(tmp_path):
    # LiteLlama-460M-1T's config.json fields (GPT-2 BPE vocab, MHA, ctx 1024)
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
          "intermediate_size": 2816, "num_attention_heads": 8, "num_hidden_layers": 24, "num_key_value_heads": 8,
          "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "vocab_size": 50304, "tie_word_embeddings": False,
          "bos_token_id": 50256, "eos_token_id": 50256, "hidden_act": "silu"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    c = Config.from_hf(tmp_path / "config.json")
    assert (c.n_layer, c.n_embd, c.n_head, c.n_query_groups, c.block_size, c.vocab_size) == (24, 1024, 8, 8, 1024, 50304)
    assert c.rope_base == 10000.0 and c.eos_id == 50256


def test_from_hf_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        Config.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Config.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="not a Llama-style model"):
        Config.from_hf(tmp_path)


def test_bad_shapes():
    with pytest.raises(ValueError, match="divisible by n_query_groups"):
        Config(n_head=16, n_query_groups=3)


def test_flops_per_token_convention():
    c = Config.from_name("MicroLlama-300M")
    assert c.flops_per_token(2048) == 6 * c.num_params(include_embedding=False) + 12 * 12 * 1024 * 2048
