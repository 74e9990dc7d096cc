"""Autoregressive generation from a `GPT`: greedy or sampled (temperature, top-k, top-p, repetition penalty).

With the KV cache (the default) the prompt is run once (prefill) and each later step feeds only the newest token;
`use_kv_cache=False` re-runs the whole sequence every step, which is slower but shares no state and serves as the
reference the cached path is tested against. The logits processors follow Hugging Face's order and definitions
(repetition penalty, then temperature, top-k, top-p) so settings mean the same thing in both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from lit_gpt.model import GPT


@torch.inference_mode()
def generate(
    model: GPT,
    prompt_ids: Union[torch.Tensor, Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    repetition_penalty: float = 1.0,
    eos_id: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    use_kv_cache: bool = True,
) -> torch.Tensor:
    """Returns the 1-D tensor prompt + new tokens. Stops after `max_new_tokens`, after emitting `eos_id` (kept in the
    output, as HF does), or when the sequence reaches the model's block_size. `temperature=0` is greedy decoding."""
    check_sampling_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
    device = model.lm_head.weight.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).flatten()
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty: give at least one token (e.g. BOS)")
    block_size = model.config.block_size
    if prompt.numel() > block_size:
        raise ValueError(f"the prompt has {prompt.numel()} tokens, more than the model's block_size {block_size}")
    total = min(prompt.numel() + max_new_tokens, block_size)

    tokens = torch.empty(total, dtype=torch.long, device=device)
    tokens[: prompt.numel()] = prompt
    n = prompt.numel()
    if use_kv_cache:
        model.set_kv_cache(batch_size=1, max_seq_length=total, device=device)
    try:
        input_pos = torch.arange(n, device=device)
        while n < total:
            if use_kv_cache:
                logits = model(tokens[None, input_pos], input_pos=input_pos)[0, -1]
            else:
                logits = model(tokens[None, :n])[0, -1]
            next_id = next_token(logits, tokens[:n], temperature, top_k, top_p, repetition_penalty, generator)
            tokens[n] = next_id
            input_pos = torch.tensor([n], device=device)
            n += 1
            if eos_id is not None and int(next_id) == eos_id:
                break
    finally:
        if use_kv_cache:
            model.clear_kv_cache()
    return tokens[:n]


def check_sampling_args(max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                        repetition_penalty: float) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


def next_token(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_k: Optional[int],
               top_p: Optional[float], repetition_penalty: float,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Picks the next id from the last position's logits (vocab,) given the ids `seen` so far."""
    logits = logits.float()
    if repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0.0:
        return logits.argmax()
    logits = logits / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[0]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (as in HF): a seen token's positive logit is divided by `penalty`, a negative one multiplied."""
    logits = logits.clone()
    score = logits[seen]
    logits[seen] = torch.where(score > 0, score / penalty, score * penalty)
    return logits


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keeps the k largest logits, the rest become -inf."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keeps the smallest set of most likely tokens whose probability reaches p (at least one)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
    # drop a token when the tokens before it already reach p; the most likely token always stays
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass
class Generation:
    ids: list[int]  # prompt + new tokens
    n_prompt: int
    seconds: float

    @property
    def new_ids(self) -> list[int]:
        return self.ids[self.n_prompt:]

    @property
    def tokens_per_second(self) -> float:
        return len(self.new_ids) / self.seconds if self.seconds > 0 else float("inf")


def timed_generate(model: GPT, prompt_ids: Sequence[int], max_new_tokens: int, **kwargs) -> Generation:
    """`generate` plus wall time (synchronising CUDA so the clock covers the kernels)."""
    device = model.lm_head.weight.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = generate(model, prompt_ids, max_new_tokens, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Generation(out.tolist(), len(prompt_ids), time.perf_counter() - t0)
