"""Model shapes: the `Config` dataclass, the named seed configs, and import/export of HF Llama configs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Optional, Union


@dataclass
class Config:
    """A Llama-style decoder: pre-norm blocks of RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU MLP.

    No biases anywhere, sequential residual, RoPE in the half-rotation (HF/NeoX) layout.
    """

    name: str = "custom"
    block_size: int = 2048  # maximum context length
    vocab_size: int = 32000
    n_layer: int = 12
    n_embd: int = 1024
    n_head: int = 16
    n_query_groups: int = 4  # number of key/value heads (GQA); == n_head is MHA, 1 is multi-query
    intermediate_size: int = 5632  # SwiGLU hidden size
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    bos_id: Optional[int] = 1
    eos_id: Optional[int] = 2
    init_std: float = 0.02  # std of the normal init of every linear and embedding weight

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_query_groups:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_query_groups ({self.n_query_groups})")
        if self.head_size % 2:
            raise ValueError(f"head size ({self.head_size}) must be even for RoPE")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    # ---- sizes -------------------------------------------------------------------------------
    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of `GPT(self)` (tied weights counted once)."""
        c, hs = self, self.head_size
        attn = c.n_embd * (c.n_head + 2 * c.n_query_groups) * hs + c.n_head * hs * c.n_embd
        mlp = 3 * c.n_embd * c.intermediate_size
        block = attn + mlp + 2 * c.n_embd
        n = c.n_layer * block + c.n_embd  # + final norm
        embedding = c.vocab_size * c.n_embd
        head = 0 if c.tie_embeddings else c.vocab_size * c.n_embd
        n += head
        if include_embedding:
            n += embedding
        elif c.tie_embeddings:
            n += embedding  # the tied matrix still does the lm_head matmul
        return n

    def flops_per_token(self, seq_len: Optional[int] = None) -> int:
        """Training FLOPs per token (forward + backward), torchtitan's convention without causal discount:
        6 x (parameters without the input embedding) + 12 x layers x n_embd x seq_len."""
        seq_len = seq_len or self.block_size
        return 6 * self.num_params(include_embedding=False) + 12 * self.n_layer * self.n_embd * seq_len

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Config fields: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "Config":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: model config not found") from None
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid lit_gpt model config ({e})") from None

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "Config":
        if name not in configs:
            raise ValueError(f"unknown config name {name!r}; known: {', '.join(sorted(configs))}")
        return replace(configs[name], **overrides)

    @classmethod
    def from_hf(cls, path: Union[str, Path], name: Optional[str] = None) -> "Config":
        """Build a config from a Hugging Face Llama `config.json` (or the folder holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral"):
            raise ValueError(f"{path}: model_type {model_type!r} is not a Llama-style model")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ValueError(f"{path}: biases in attention/MLP are not supported")
        rope_scaling = hf.get("rope_scaling")
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise ValueError(f"{path}: rope_scaling {rope_scaling} is not supported")
        n_head = hf["num_attention_heads"]
        n_embd = hf["hidden_size"]
        if hf.get("head_dim") not in (None, n_embd // n_head):
            raise ValueError(f"{path}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
        rope_base = hf.get("rope_theta")
        if rope_base is None:  # transformers >= 5 may keep it under rope_parameters
            rope_base = (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            name=name or hf.get("_name_or_path") or path.parent.name,
            block_size=hf.get("max_position_embeddings", 2048),
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_embd=n_embd,
            n_head=n_head,
            n_query_groups=hf.get("num_key_value_heads") or n_head,
            intermediate_size=hf["intermediate_size"],
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_base=float(rope_base),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=hf.get("bos_token_id"),
            eos_id=_first(hf.get("eos_token_id")),
        )

    def to_hf(self, torch_dtype: str = "float32") -> dict[str, Any]:
        """The transformers `LlamaConfig` dict for this shape."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.n_embd,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "num_key_value_heads": self.n_query_groups,
            "head_dim": self.head_size,
            "hidden_act": "silu",
            "max_position_embeddings": self.block_size,
            "initializer_range": self.init_std,
            "rms_norm_eps": self.norm_eps,
            "rope_theta": self.rope_base,
            "rope_scaling": None,
            "attention_bias": False,
            "mlp_bias": False,
            "attention_dropout": 0.0,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "use_cache": True,
            "torch_dtype": torch_dtype,
        }


def padded_vocab_size(n_pieces: int, multiple: int = 64) -> int:
    """The model's vocab_size for a tokenizer of `n_pieces` (added tokens included): rounded up to a multiple of 64,
    so the embedding and lm_head matmuls keep shapes the GPU's tensor cores tile evenly (49,152 and 32,000 already
    are). The extra rows are never an input and learn to be never predicted."""
    return -(-n_pieces // multiple) * multiple


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) and x else x


configs: dict[str, Config] = {
    c.name: c
    for c in [
        # https://huggingface.co/keeeeenw/MicroLlama (~304M)
        Config(name="MicroLlama-300M", n_layer=12, n_embd=1024, n_head=16, n_query_groups=4, intermediate_size=5632),
        # https://huggingface.co/TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T (~1.1B)
        Config(name="TinyLlama-1.1B", n_layer=22, n_embd=2048, n_head=32, n_query_groups=4, intermediate_size=5632),
        Config(name="TinyLlama-120M", n_layer=12, n_embd=768, n_head=12, n_query_groups=1, intermediate_size=2048),
        # tied embeddings (~362M)
        Config(
            name="smol-llama-360M", n_layer=32, n_embd=960, n_head=15, n_query_groups=5, intermediate_size=2560,
            vocab_size=49152, tie_embeddings=True,
        ),
        # small shapes for the demo and tests; vocab matches the bundled sample tokenizer
        Config(name="debug", block_size=256, vocab_size=4096, n_layer=4, n_embd=128, n_head=4, n_query_groups=2,
               intermediate_size=352),
        Config(name="tiny", block_size=64, vocab_size=512, n_layer=2, n_embd=32, n_head=4, n_query_groups=2,
               intermediate_size=88),
    ]
}

