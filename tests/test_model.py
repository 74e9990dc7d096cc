"""Basic GPT behaviour: KV cache, block_size guard, the documented init, gradients. Parity with transformers'
LlamaForCausalLM through converted folders is in tests/test_convert.py."""

import math

import pytest
import torch

from lit_gpt import GPT, Config


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(Config.from_name("tiny", **overrides)).eval()


@pytest.mark.parametrize("n_query_groups", [4, 2, 1])
def test_kv_cache_logits_equal_full_forward(n_query_groups):
    model = tiny(n_query_groups=n_query_groups)
    idx = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        model.set_kv_cache(batch_size=2, max_seq_length=16)
        prefill = 7
        steps = [model(idx[:, :prefill], input_pos=torch.arange(prefill))]
        for t in range(prefill, idx.shape[1]):  # one token at a time
            steps.append(model(idx[:, t:t + 1], input_pos=torch.tensor([t])))
        cached = torch.cat(steps, dim=1)
        model.clear_kv_cache()
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_longer_than_block_size_raises():
    model = tiny()
    with pytest.raises(ValueError, match="sequence length 65 exceeds block_size 64"):
        model(torch.zeros(1, model.config.block_size + 1, dtype=torch.long))


def test_init_scales_residual_projections():
    config = Config.from_name("tiny", n_layer=8, n_embd=64, intermediate_size=128, vocab_size=256)
    torch.manual_seed(0)
    model = GPT(config)
    std = config.init_std

    def pooled_std(suffix):
        return torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith(suffix)]).std().item()

    scaled = std / math.sqrt(2 * config.n_layer)
    for suffix in ("attn.proj.weight", "mlp.down.weight"):
        assert pooled_std(suffix) == pytest.approx(scaled, rel=0.03), suffix
    for suffix in ("attn.qkv.weight", "mlp.gate_up.weight", "embed.weight", "lm_head.weight"):
        assert pooled_std(suffix) == pytest.approx(std, rel=0.03), suffix
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert len(norms) == 2 * config.n_layer + 1 and all(torch.all(p == 1) for p in norms)


@pytest.mark.parametrize("tie", [False, True])
def test_gradient_reaches_every_parameter(tie):
    model = tiny(tie_embeddings=tie).train()
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    loss = model(idx[:, :-1], targets=idx[:, 1:])
    assert loss.item() == pytest.approx(math.log(model.config.vocab_size), rel=0.1)  # near-uniform at init
    loss.backward()
    params = dict(model.named_parameters())
    assert ("lm_head.weight" in params) is not tie  # a tied head is the embedding itself
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_compiled_model_compiles_once():
    """torch.compile of the whole model must not recompile on later calls (it did while RoPE tables were cached on
    the module: the first call filled the cache, which failed the guards of the second)."""
    torch._dynamo.reset()
    model = GPT(Config.from_name("tiny"))
    compiled = torch.compile(model, backend="eager")  # guards are dynamo's; no backend compile needed
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    compiled(idx, idx).backward()  # first call compiles
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            compiled(idx, idx).backward()


@pytest.mark.parametrize("autocast", [False, True])
def test_blocks_share_one_compiled_graph(autocast):
    """Per-Block compile (the trainer's --compile), float32 and under bf16 autocast: every Block, the first one
    included, gets inputs of the same kinds, so all share one graph (a float32 zero delta before the first Block
    made the second one recompile under autocast, where the MLP outputs bf16)."""
    from torch._dynamo.utils import counters

    from lit_gpt.training.parallel import wrap_blocks

    torch._dynamo.reset()
    counters.clear()
    model = GPT(Config.from_name("tiny"))
    wrap_blocks(model, activation_checkpointing=False, compile=True, backend="eager")
    idx = torch.randint(0, model.config.vocab_size, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for _ in range(2):
            model(idx, idx).backward()
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
