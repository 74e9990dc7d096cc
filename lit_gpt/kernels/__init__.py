"""Fused Triton kernels for training, each beside its plain PyTorch reference.

`GPT(config, kernels=True)` routes through them on CUDA (and on CPU under TRITON_INTERPRET=1, for tests):
RMSNorm (+ residual add), RoPE on q and k, SwiGLU, and the chunked lm_head + cross-entropy whose full float32
logits never exist. Each is a `torch.library.custom_op` with a registered autograd formula, so
`torch.compile` treats it as one opaque op (no graph break) and FSDP2 sees plain local tensors. Any strided view
is a valid input (storage offset, steps, transposed, expanded with stride 0): launchers pass row strides or copy
what a kernel reads densely (an input already laid out as the kernel reads it is never copied).
Attention (`lit_gpt.kernels.attention`) picks among cuDNN, SDPA and the optional packages of
`lit_gpt.kernels.optional` (flash-attn 2 and 3, xformers); LIT_GPT_SWIGLU=xformers swaps the Triton SwiGLU for
xformers' MLP op.
"""

from lit_gpt.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from lit_gpt.kernels.rmsnorm import add_rms_norm, add_rms_norm_reference, rms_norm, rms_norm_reference
from lit_gpt.kernels.rope import apply_rope, apply_rope_reference
from lit_gpt.kernels.swiglu import swiglu, swiglu_backend, swiglu_packed, swiglu_reference, xformers_mlp
from lit_gpt.ops import kernels_supported

__all__ = [
    "add_rms_norm", "add_rms_norm_reference", "apply_rope", "apply_rope_reference", "kernels_supported",
    "linear_cross_entropy", "linear_cross_entropy_reference", "rms_norm", "rms_norm_reference", "swiglu",
    "swiglu_backend", "swiglu_packed", "swiglu_reference", "xformers_mlp",
]
