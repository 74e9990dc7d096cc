"""lit_gpt: pretrain small Llama-style language models from scratch under Lightning Fabric."""

from lit_gpt.config import Config
from lit_gpt.model import GPT

__all__ = ["Config", "GPT"]
