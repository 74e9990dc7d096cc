"""Generation: the KV-cache path equals the uncached path and transformers' `generate`; sampling is seeded."""

from pathlib import Path

import pytest
import torch

from lit_gpt.config import Config
from lit_gpt.generate import filter_top_k, filter_top_p, apply_repetition_penalty, generate
from lit_gpt.model import GPT

transformers = pytest.importorskip("transformers")

PROMPT = [1, 17, 300, 42, 9, 250]


def make_model(n_query_groups: int, seed: int = 0) -> GPT:
    # a wide init spreads the logits so greedy choices are not near-ties decided by rounding
    config = Config.from_name("tiny", n_query_groups=n_query_groups, init_std=0.3)
    torch.manual_seed(seed)
    return GPT(config).eval()


def to_hf(model: GPT, folder: Path):
    """The converted model as a user gets it: save_hf_folder, then transformers' from_pretrained."""
    from lit_gpt.convert import save_hf_folder

    save_hf_folder(model.state_dict(), model.config, folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def hf_greedy(hf, prompt, max_new_tokens, eos_id=None, repetition_penalty=1.0) -> list[int]:
    cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id,
                                        pad_token_id=0, bos_token_id=1, repetition_penalty=repetition_penalty)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), generation_config=cfg,
                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0].tolist()


@pytest.mark.parametrize("n_query_groups", [2, 4], ids=["gqa", "mha"])
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.5], ids=["plain", "rep_penalty"])
def test_greedy_equals_uncached_and_hf(n_query_groups, repetition_penalty, tmp_path):
    model = make_model(n_query_groups)
    kw = dict(max_new_tokens=24, repetition_penalty=repetition_penalty)
    cached = generate(model, PROMPT, use_kv_cache=True, **kw).tolist()
    uncached = generate(model, PROMPT, use_kv_cache=False, **kw).tolist()
    assert cached[: len(PROMPT)] == PROMPT and len(cached) == len(PROMPT) + 24
    assert cached == uncached
    assert cached == hf_greedy(to_hf(model, tmp_path / "hf"), PROMPT, **kw)
    assert len(set(cached[len(PROMPT):])) > 3  # a real continuation, not one token repeated


def test_stops_at_eos_like_hf(tmp_path):
    model = make_model(2)
    free = generate(model, PROMPT, 12).tolist()
    eos = free[len(PROMPT) + 4]  # the 5th new token, first occurrence
    first = free.index(eos, len(PROMPT))
    out = generate(model, PROMPT, 12, eos_id=eos).tolist()
    assert out == free[: first + 1]
    assert out == hf_greedy(to_hf(model, tmp_path / "hf"), PROMPT, 12, eos_id=eos)


def test_respects_block_size():
    model = make_model(2)
    block = model.config.block_size
    prompt = list(range(3, block - 2))
    assert len(generate(model, prompt, 50)) == block
    assert generate(model, prompt, 50).tolist() == generate(model, prompt, 50, use_kv_cache=False).tolist()
    with pytest.raises(ValueError, match="more than the model's block_size"):
        generate(model, list(range(block + 1)), 1)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], 1)


def test_sampling_seeded_and_top_k_one_is_greedy():
    model = make_model(2)

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate(model, PROMPT, 20, temperature=1.0, generator=g, **kw).tolist()

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7, top_p=0.9, top_k=50) == sample(7, top_p=0.9, top_k=50)
    greedy = generate(model, PROMPT, 20).tolist()
    assert sample(3, top_k=1) == greedy
    assert sample(4, top_p=1e-6) == greedy  # the nucleus always keeps the most likely token
    assert model.blocks[0].attn.kv_cache is None  # the cache is released after generation


def test_logits_processors_match_hf():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(1, 200) * 3
    seen = torch.tensor([[5, 9, 9, 150, 7]])
    for k in (1, 5, 200):
        assert torch.equal(filter_top_k(logits[0], k), TopKLogitsWarper(k)(seen, logits.clone())[0])
    for p in (0.05, 0.5, 0.9):
        ours = filter_top_p(logits[0], p)
        assert torch.equal(ours.isinf(), TopPLogitsWarper(p)(seen, logits.clone())[0].isinf())
        assert ours.isfinite().sum() >= 1
    for penalty in (0.7, 1.3):
        ref = RepetitionPenaltyLogitsProcessor(penalty)(seen, logits.clone())[0]
        torch.testing.assert_close(apply_repetition_penalty(logits[0], seen[0], penalty), ref)


def test_bad_sampling_args():
    model = make_model(2)
    for kw, msg in [(dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "top_p"),
                    (dict(repetition_penalty=0.0), "repetition_penalty")]:
        with pytest.raises(ValueError, match=msg):
            generate(model, PROMPT, 2, **kw)



@pytest.fixture
def lit_folder(tmp_path):
    from lit_gpt.weights import save_lit_folder

    config = Config.from_name("tiny", vocab_size=4096, init_std=0.3)  # the bundled tokenizer's vocabulary
    torch.manual_seed(0)
    return save_lit_folder(GPT(config).state_dict(), config, tmp_path / "lit",
                           tokenizer_dir=Path(__file__).resolve().parents[1] / "data" / "tokenizer")


def test_generate_script(lit_folder, capsys):
    from lit_gpt.checkpoint import load_model
    from lit_gpt.tokenizer import Tokenizer
    from scripts.generate import main

    main(["--checkpoint", str(lit_folder), "--prompt", "The license", "--max_new_tokens", "12", "--device", "cpu"])
    out, err = capsys.readouterr()
    tok = Tokenizer(lit_folder)
    ids = generate(load_model(lit_folder), tok.encode("The license", bos=True), 12, eos_id=tok.eos_id).tolist()
    ids = ids[1:-1] if ids[-1] == tok.eos_id else ids[1:]
    assert out.strip() == tok.decode(ids).strip() and out.startswith("The license")
    assert "tokens/s" in err

    def sampled(seed):
        main(["--checkpoint", str(lit_folder), "--prompt", "The license", "--max_new_tokens", "12",
              "--temperature", "1.0", "--top_p", "0.95", "--seed", str(seed), "--device", "cpu"])
        return capsys.readouterr().out

    assert sampled(3) == sampled(3) != sampled(4)


def test_generate_script_errors(lit_folder, tmp_path):
    from scripts.generate import main

    (lit_folder / "tokenizer.model").unlink()
    (lit_folder / "tokenizer_config.json").unlink()
    with pytest.raises(SystemExit, match=f"error: {lit_folder}: no tokenizer"):
        main(["--checkpoint", str(lit_folder), "--prompt", "x"])
    with pytest.raises(SystemExit, match="error: .*checkpoint not found"):
        main(["--checkpoint", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match="error: top_p must be in"):
        main(["--checkpoint", str(lit_folder), "--top_p", "0"])
