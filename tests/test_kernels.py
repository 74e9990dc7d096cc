"""The Triton kernels of lit_gpt.kernels against float64 PyTorch references, forward and gradients.

Without a GPU they run on the CPU under TRITON_INTERPRET=1 (set here before triton is imported), at small shapes;
with one they run on CUDA, plus the bigger bf16 `cuda` tests. Outputs are poisoned: deterministic mode makes
every torch.empty NaN-filled, so an element a kernel forgets to write shows up as NaN.
"""

import math
import os

import pytest
import torch

_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run interpreted on CPU tensors

import triton  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from lit_gpt import GPT, Config  # noqa: E402
from lit_gpt.kernels import (  # noqa: E402
    add_rms_norm, add_rms_norm_reference, apply_rope, apply_rope_reference, linear_cross_entropy,
    linear_cross_entropy_reference, rms_norm, rms_norm_reference, swiglu, swiglu_packed, swiglu_reference,
)
from lit_gpt.kernels import rmsnorm as rmsnorm_module  # noqa: E402
from lit_gpt.ops import build_rope_cache  # noqa: E402
from tests.attention_reference import attention_float64, relative_error  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 7):
    pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run these kernels (range over a scalar "
                "argument fails before 3.7): pip install 'triton>=3.7'", allow_module_level=True)
if DEVICE.type == "cpu" and not isinstance(rmsnorm_module._rms_norm_fwd_kernel, InterpretedFunction):
    pytest.skip("lit_gpt.kernels was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def restore_interpret_env():
    """Tests after this module see TRITON_INTERPRET as it was (the model takes the reference path on CPU again)."""
    yield
    if _PREVIOUS_INTERPRET is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """NaN-fill every uninitialised allocation (torch.empty & co.) for the duration of a test."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def fresh(*shape, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype)


def as64(t):
    return t.detach().double().requires_grad_()


def close(actual, expected, tol=1e-5):
    assert not torch.isnan(actual).any(), "NaN in kernel output (an element was never written)"
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol)


# ---- RMSNorm --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (3, 5, 37), (2, 130), (4, 64)])
def test_rms_norm_matches_float64(shape):
    seed = sum(shape)
    x, w = fresh(*shape, seed=seed).requires_grad_(), fresh(shape[-1], seed=seed + 1).requires_grad_()
    dy = fresh(*shape, seed=seed + 2)
    y = rms_norm(x, w, 1e-5)
    x64, w64 = as64(x), as64(w)
    y64 = rms_norm_reference(x64, w64, 1e-5)
    close(y, y64)
    y.backward(dy)
    y64.backward(dy.double())
    close(x.grad, x64.grad)
    close(w.grad, w64.grad)


@pytest.mark.parametrize("shape", [(3, 5, 37), (6, 48)])
def test_add_rms_norm_matches_float64(shape):
    seed = 7 * sum(shape)
    x, r = fresh(*shape, seed=seed).requires_grad_(), fresh(*shape, seed=seed + 1).requires_grad_()
    w = fresh(shape[-1], seed=seed + 2).requires_grad_()
    dy, ds = fresh(*shape, seed=seed + 3), fresh(*shape, seed=seed + 4)
    y, s = add_rms_norm(x, r, w, 1e-6)
    x64, r64, w64 = as64(x), as64(r), as64(w)
    y64, s64 = add_rms_norm_reference(x64, r64, w64, 1e-6)
    close(y, y64)
    close(s, s64)
    ((y * dy).sum() + (s * ds).sum()).backward()
    ((y64 * dy.double()).sum() + (s64 * ds.double()).sum()).backward()
    for a, b in ((x, x64), (r, r64), (w, w64)):
        close(a.grad, b.grad)


def test_rms_norm_rejects_mismatched_weight():
    with pytest.raises(ValueError, match="does not match"):
        rms_norm(fresh(2, 8, seed=0), fresh(7, seed=1), 1e-5)


# ---- RoPE -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,n_head,n_kv,hs", [(2, 5, 4, 2, 6), (1, 7, 3, 3, 10), (2, 3, 6, 1, 16)])
def test_rope_matches_float64_on_qkv_views(B, T, n_head, n_kv, hs):
    seed = B * 100 + T * 10 + hs
    qkv = fresh(B, T, n_head + 2 * n_kv, hs, seed=seed).requires_grad_()
    cos, sin = build_rope_cache(T, hs, 10000.0, DEVICE)
    q, k, _ = qkv.split([n_head, n_kv, n_kv], dim=2)  # strided views, as in the model
    q_rot, k_rot = apply_rope(q, k, cos, sin)
    qkv64 = as64(qkv)
    q64, k64, _ = qkv64.split([n_head, n_kv, n_kv], dim=2)
    q_ref, k_ref = apply_rope_reference(q64, k64, cos.double(), sin.double())
    close(q_rot, q_ref)
    close(k_rot, k_ref)
    dq, dk = fresh(*q.shape, seed=seed + 1), fresh(*k.shape, seed=seed + 2)
    ((q_rot * dq).sum() + (k_rot * dk).sum()).backward()
    ((q_ref * dq.double()).sum() + (k_ref * dk.double()).sum()).backward()
    close(qkv.grad, qkv64.grad)  # the v part must get exactly zero


def test_rope_inplace_without_grad():
    B, T, n_head, n_kv, hs = 2, 4, 4, 2, 8
    qkv = fresh(B, T, n_head + 2 * n_kv, hs, seed=3)
    cos, sin = build_rope_cache(T, hs, 10000.0, DEVICE)
    q, k, v = qkv.split([n_head, n_kv, n_kv], dim=2)
    q_ref, k_ref = apply_rope_reference(q.double(), k.double(), cos.double(), sin.double())
    v_before = v.clone()
    with torch.no_grad():
        q_out, k_out = apply_rope(q, k, cos, sin, inplace=True)
    assert q_out.data_ptr() == q.data_ptr() and k_out.data_ptr() == k.data_ptr()
    close(q, q_ref)
    close(k, k_ref)
    assert torch.equal(v, v_before)


# ---- SwiGLU ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 45), (2, 1100), (1, 1)])
def test_swiglu_matches_float64(shape):
    seed = sum(shape) + 11
    h = fresh(*shape[:-1], 2 * shape[-1], seed=seed, scale=3.0).requires_grad_()
    dy = fresh(*shape, seed=seed + 1)
    h64 = as64(h)
    y64 = swiglu_reference(*h64.chunk(2, dim=-1))
    y64.backward(dy.double())
    y = swiglu_packed(h)
    close(y, y64)
    y.backward(dy)
    close(h.grad, h64.grad)
    h.grad = None
    y = swiglu(*h.chunk(2, dim=-1))  # strided halves
    close(y, y64)
    y.backward(dy)
    close(h.grad, h64.grad)


def test_xformers_swiglu_mlp_matches_float64_and_the_model_uses_it_when_chosen():
    """LIT_GPT_SWIGLU=xformers: xformers.ops.swiglu does the whole MLP (it has a CPU path: its eager op); the
    model with kernels on then gives the reference's loss and gradients. Skipped without xformers."""
    pytest.importorskip("xformers", reason="xformers is not installed (the extra lit_gpt[xformers])")
    from lit_gpt.kernels.swiglu import set_swiglu_backend, swiglu_backend, xformers_mlp

    C, I = 24, 40
    x, w12, w3 = fresh(3, 5, C, seed=1), fresh(2 * I, C, seed=2, scale=0.3), fresh(C, I, seed=3, scale=0.3)
    x, w12, w3 = (t.requires_grad_() for t in (x, w12, w3))
    x64, w12_64, w3_64 = as64(x), as64(w12), as64(w3)
    y64 = (swiglu_reference(*(x64 @ w12_64.T).chunk(2, dim=-1))) @ w3_64.T
    y64.sum().backward()
    y = xformers_mlp(x, w12, w3)
    y.sum().backward()
    close(y, y64, tol=1e-4)
    for actual, expected in [(x.grad, x64.grad), (w12.grad, w12_64.grad), (w3.grad, w3_64.grad)]:
        close(actual, expected, tol=1e-4)

    config = Config.from_name("tiny", n_layer=2)
    torch.manual_seed(0)
    model = GPT(config).to(DEVICE)
    idx = torch.randint(0, config.vocab_size, (2, 12), device=DEVICE)
    loss_ref, grads_ref = model_loss_and_grads(model, idx, idx)
    model.set_kernels(True)
    set_swiglu_backend("xformers")
    try:
        assert swiglu_backend() == "xformers"
        loss_x, grads_x = model_loss_and_grads(model, idx, idx)
    finally:
        set_swiglu_backend("triton")
    close(loss_x, loss_ref, tol=1e-5)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_x[name], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


# ---- fused linear + cross-entropy -----------------------------------------------------------------------------
@pytest.mark.parametrize("N,C,V,chunk,z_loss,ignore_index", [
    (13, 16, 1000, 4, 0.0, -100),  # vocab not a multiple of the block, several chunks with a ragged last one
    (6, 24, 5000, None, 1e-3, -100),  # vocab spanning two 4096 blocks, z-loss, one chunk
    (9, 8, 37, 1, 1e-2, 5),  # a chunk per row, a vocab id used as ignore_index
])
def test_linear_cross_entropy_matches_float64(N, C, V, chunk, z_loss, ignore_index):
    seed = N * C + V
    x, w = fresh(N, C, seed=seed).requires_grad_(), fresh(V, C, seed=seed + 1, scale=0.5).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    targets[1] = ignore_index
    targets[N - 1] = ignore_index
    loss = linear_cross_entropy(x, w, targets, ignore_index=ignore_index, z_loss=z_loss, chunk_size=chunk)
    x64, w64 = as64(x), as64(w)
    ref = linear_cross_entropy_reference(x64, w64, targets, ignore_index=ignore_index, z_loss=z_loss)
    close(loss, ref)
    (3.0 * loss).backward()  # a grad_output != 1 must scale the stored gradients
    (3.0 * ref).backward()
    close(x.grad, x64.grad)
    close(w.grad, w64.grad)
    if z_loss == 0.0:  # the reference itself agrees with PyTorch's cross-entropy
        logits = x64 @ w64.t()
        close(ref, torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index))


def test_linear_cross_entropy_frozen_weight_and_no_grad():
    x, w = fresh(5, 8, seed=1).requires_grad_(), fresh(50, 8, seed=2)
    targets = torch.arange(5, device=DEVICE)
    loss = linear_cross_entropy(x, w, targets)
    loss.backward()
    x64 = as64(x)
    linear_cross_entropy_reference(x64, w.double(), targets).backward()
    close(x.grad, x64.grad)
    with torch.no_grad():
        close(linear_cross_entropy(x, w, targets), loss.detach())


def test_linear_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="need x"):
        linear_cross_entropy(fresh(4, 8, seed=0), fresh(10, 7, seed=1), torch.zeros(4, dtype=torch.long))


# ---- input layouts --------------------------------------------------------------------------------------------
LAYOUTS = ["offset", "step", "transposed", "expanded"]


def in_layout(shape, layout, make):
    """A leaf `base = make(*base_shape)` and a function viewing a base as `shape` in `layout`: "offset" (storage
    offset 3), "step" (every other element of the last dim), "transposed" (dims reversed in memory; 1-D stays
    dense), "expanded" (one row broadcast over dim 0, stride 0). Bases are big enough that a kernel reading a
    strided view densely gives a wrong result, not a crash. The base's gradient checks the backward, zeros where
    the view does not reach included."""
    numel = math.prod(shape)
    if layout == "offset":
        return make(numel + 3), lambda b: b[3:].view(shape)
    if layout == "step":
        return make(*shape[:-1], 2 * shape[-1]), lambda b: b[..., 1::2]
    if layout == "transposed":
        return make(*reversed(shape)), lambda b: b.permute(*reversed(range(len(shape))))
    assert layout == "expanded"
    return make(shape[0] + 1, *shape[1:]), lambda b: b[1:2].expand(shape)


def leaf_in_layout(shape, layout, seed, scale=1.0):
    """(base, view, base64, view64): a fresh float32 leaf requiring grad seen in `layout`, and its float64 twin."""
    base, view = in_layout(shape, layout, lambda *s: fresh(*s, seed=seed, scale=scale))
    base.requires_grad_()
    base64 = as64(base)
    return base, view(base), base64, view(base64)


def laid_out(shape, layout, seed, scale=1.0):
    """Fresh float32 values seen in `layout`, without gradient (incoming gradients, RoPE tables)."""
    return leaf_in_layout(shape, layout, seed, scale)[1].detach()


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rms_norm_any_input_layout_matches_float64(layout, residual):
    shape, seed = (3, 2, 16), 50 + LAYOUTS.index(layout)
    xb, x, xb64, x64 = leaf_in_layout(shape, layout, seed)
    rb, r, rb64, r64 = leaf_in_layout(shape, layout, seed + 1)
    wb, w, wb64, w64 = leaf_in_layout(shape[-1:], layout, seed + 2)
    dy = laid_out(shape, layout, seed + 3)  # strided and stride-0 incoming gradients too
    if residual:
        (y, s), (y64, s64) = add_rms_norm(x, r, w, 1e-5), add_rms_norm_reference(x64, r64, w64, 1e-5)
        close(s, s64)
    else:
        y, y64 = rms_norm(x, w, 1e-5), rms_norm_reference(x64, w64, 1e-5)
    close(y, y64)
    y.backward(dy)
    y64.backward(dy.double())
    for a, b in ((xb, xb64), (wb, wb64)) + (((rb, rb64),) if residual else ()):
        close(a.grad, b.grad)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rope_any_input_layout_matches_float64(layout):
    B, T, n_head, n_kv, hs, seed = 2, 3, 2, 1, 8, 60 + LAYOUTS.index(layout)
    qb, q, qb64, q64 = leaf_in_layout((B, T, n_head, hs), layout, seed)
    kb, k, kb64, k64 = leaf_in_layout((B, T, n_kv, hs), layout, seed + 1)
    cos, sin = laid_out((T, hs), layout, seed + 2), laid_out((T, hs), layout, seed + 3)
    q_rot, k_rot = apply_rope(q, k, cos, sin)
    q_ref, k_ref = apply_rope_reference(q64, k64, cos.double(), sin.double())
    close(q_rot, q_ref)
    close(k_rot, k_ref)
    dq, dk = laid_out(q.shape, layout, seed + 4), laid_out(k.shape, layout, seed + 5)
    torch.autograd.backward((q_rot, k_rot), (dq, dk))
    torch.autograd.backward((q_ref, k_ref), (dq.double(), dk.double()))
    close(qb.grad, qb64.grad)
    close(kb.grad, kb64.grad)
    with torch.no_grad():  # in place: an expanded q or k must not be rotated once per position that shares it
        q_in, k_in = apply_rope(q.detach(), k.detach(), cos, sin, inplace=True)
    close(q_in, q_ref)
    close(k_in, k_ref)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swiglu_any_input_layout_matches_float64(layout):
    shape, seed = (3, 2, 24), 70 + LAYOUTS.index(layout)
    gb, g, gb64, g64 = leaf_in_layout(shape, layout, seed, scale=3.0)
    ub, u, ub64, u64 = leaf_in_layout(shape, layout, seed + 1)
    hb, h, hb64, h64 = leaf_in_layout((*shape[:-1], 2 * shape[-1]), layout, seed + 2, scale=3.0)
    dy = laid_out(shape, layout, seed + 3)
    y, y64 = swiglu(g, u), swiglu_reference(g64, u64)
    close(y, y64)
    y.backward(dy)
    y64.backward(dy.double())
    for a, b in ((gb, gb64), (ub, ub64)):
        close(a.grad, b.grad)
    y, y64 = swiglu_packed(h), swiglu_reference(*h64.chunk(2, dim=-1))
    close(y, y64)
    y.backward(dy)
    y64.backward(dy.double())
    close(hb.grad, hb64.grad)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_cross_entropy_any_input_layout_matches_float64(layout):
    N, C, V, seed = 7, 8, 40, 80 + LAYOUTS.index(layout)
    xb, x, xb64, x64 = leaf_in_layout((N, C), layout, seed)
    wb, w, wb64, w64 = leaf_in_layout((V, C), layout, seed + 1, scale=0.5)
    gen = torch.Generator().manual_seed(seed)
    base, view = in_layout((N,), layout, lambda *s: torch.randint(0, V, s, generator=gen).to(DEVICE))
    base[4:6] = -100  # ignored rows inside the view (outside it for "expanded", whose row 1 is every target)
    targets = view(base)
    loss = linear_cross_entropy(x, w, targets, chunk_size=4)
    ref = linear_cross_entropy_reference(x64, w64, targets)
    close(loss, ref)
    loss.backward()
    ref.backward()
    close(xb.grad, xb64.grad)
    close(wb.grad, wb64.grad)


@pytest.mark.parametrize("bad", [40, 41, -1, -101])
def test_linear_cross_entropy_rejects_out_of_range_targets(bad):
    """Like F.cross_entropy: an error (on CUDA a device-side assert, with no host sync), not a made-up loss."""
    x, w = fresh(4, 8, seed=1).requires_grad_(), fresh(40, 8, seed=2)
    targets = torch.tensor([3, -100, bad, 0], device=DEVICE)
    with pytest.raises(RuntimeError, match=r"target is outside \[0, 40\) and is not ignore_index -100"):
        linear_cross_entropy(x, w, targets)
    with pytest.raises(ValueError, match="integer class ids"):
        linear_cross_entropy(x, w, targets.float())


# ---- the whole model ------------------------------------------------------------------------------------------
def model_loss_and_grads(model, idx, targets):
    model.zero_grad(set_to_none=True)
    loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gpt_with_kernels_matches_reference():
    config = Config.from_name("tiny", n_layer=2, vocab_size=300)  # 300 is not a multiple of any block
    torch.manual_seed(0)
    model = GPT(config).to(DEVICE)
    idx = torch.randint(0, config.vocab_size, (2, 12), device=DEVICE)
    targets = torch.randint(0, config.vocab_size, (2, 12), device=DEVICE)
    targets[0, :3] = -100
    loss_ref, grads_ref = model_loss_and_grads(model, idx, targets)
    model.set_kernels(True)
    assert all(m.kernels for m in (model.blocks[0].attn, model.blocks[0].mlp, model.blocks[0].mlp_norm, model.norm))
    loss_k, grads_k = model_loss_and_grads(model, idx, targets)
    close(loss_k, loss_ref, tol=1e-5)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_k[name], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    with torch.no_grad():  # logits path (no targets): kernels for norms/RoPE/SwiGLU, in-place RoPE
        model.set_kernels(False)
        logits_ref = model(idx)
        model.set_kernels(True)
        close(model(idx), logits_ref, tol=1e-4)


def test_gpt_with_kernels_takes_strided_targets_and_rejects_out_of_range_ones():
    """A targets view whose flatten() stays strided (here every other id of a (B, T, 2) tensor) gives the loss and
    gradients of the reference path; an id >= vocab_size raises on both paths instead of giving a loss."""
    config = Config.from_name("tiny", n_layer=1, vocab_size=50)
    torch.manual_seed(0)
    model = GPT(config).to(DEVICE)
    idx = torch.randint(0, config.vocab_size, (2, 6), device=DEVICE)
    pairs = torch.randint(0, config.vocab_size, (2, 6, 2), device=DEVICE)
    pairs[0, :2, 1] = -100
    targets = pairs[..., 1]
    assert targets.flatten().stride() == (2,)
    loss_ref, grads_ref = model_loss_and_grads(model, idx, targets)
    model.set_kernels(True)
    loss_k, grads_k = model_loss_and_grads(model, idx, targets)
    close(loss_k, loss_ref, tol=1e-5)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads_k[name], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    pairs[1, 3, 1] = config.vocab_size
    with pytest.raises(RuntimeError, match="target is outside"):
        model(idx, targets)
    model.set_kernels(False)
    with pytest.raises(IndexError, match="out of bounds"):
        model(idx, targets)


def test_gpt_with_kernels_compiles_without_graph_breaks():
    """The kernels are custom ops with fake implementations: dynamo traces the model in one graph."""
    config = Config.from_name("tiny", n_layer=1, vocab_size=100)
    model = GPT(config, kernels=True).to(DEVICE)
    idx = torch.randint(0, config.vocab_size, (1, 8), device=DEVICE)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(idx, idx)
    loss.backward()
    torch._dynamo.reset()
    close(loss.detach(), GPT.forward(model, idx, idx).detach(), tol=1e-5)


# ---- CUDA: bigger shapes, bf16 ---------------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_bf16_kernels_at_model_shapes():
    x = fresh(4, 2048, 1024, seed=1, dtype=torch.bfloat16)
    w = fresh(1024, seed=2).requires_grad_()
    close(rms_norm(x, w, 1e-5).float(), rms_norm_reference(x.double(), w.double(), 1e-5), tol=3e-2)
    qkv = fresh(2, 2048, 24, 64, seed=3, dtype=torch.bfloat16)
    cos, sin = build_rope_cache(2048, 64, 10000.0, DEVICE)
    q, k, _ = qkv.split([16, 4, 4], dim=2)
    for out, ref in zip(apply_rope(q, k, cos, sin), apply_rope_reference(q.double(), k.double(), cos.double(),
                                                                         sin.double())):
        close(out, ref, tol=3e-2)
    h = fresh(4096, 2 * 5632, seed=4, dtype=torch.bfloat16)
    close(swiglu_packed(h), swiglu_reference(*h.double().chunk(2, dim=-1)), tol=3e-2)


@pytest.mark.cuda
def test_cuda_linear_cross_entropy_bf16_autocast():
    x = fresh(8192, 1024, seed=5).requires_grad_()
    w = fresh(32000, 1024, seed=6, scale=0.02).requires_grad_()
    targets = torch.randint(0, 32000, (8192,), device=DEVICE)
    targets[::7] = -100
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(x, w, targets, chunk_size=2048)
        ref = torch.nn.functional.cross_entropy((x @ w.t()).float(), targets)
    loss.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    ref.backward()
    close(loss, ref, tol=1e-3)
    close(gx, x.grad, tol=1e-3)
    close(gw, w.grad, tol=1e-3)


@pytest.mark.cuda
def test_cuda_gpt_bf16_kernels_match_reference():
    config = Config.from_name("debug")
    torch.manual_seed(0)
    model = GPT(config).to(DEVICE)
    idx = torch.randint(0, config.vocab_size, (4, 256), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_ref, grads_ref = model_loss_and_grads(model, idx, idx)
        model.set_kernels(True)
        loss_k, grads_k = model_loss_and_grads(model, idx, idx)
    close(loss_k, loss_ref, tol=2e-2)
    for name, g in grads_ref.items():
        rel = (grads_k[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert rel < 5e-2, f"{name}: relative gradient error {rel:.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["auto", "cudnn", "sdpa", "flash_attn", "flash_attn3", "xformers"])
@pytest.mark.parametrize("n_head, n_kv, T", [(16, 4, 1001), (8, 8, 256), (12, 1, 333)])
def test_cuda_attention_backends_match_float64(backend, n_head, n_kv, T):
    """Each attention backend (cuDNN is the default on Hopper), GQA without repeating k/v where the backend takes
    it, forward and gradients against float64 on fresh bf16 inputs; GQA 16/4, MHA, MQA, odd lengths. An optional
    backend that is not installed or does not work here is skipped, saying why."""
    from lit_gpt.kernels.attention import causal_attention, resolve_backend, set_attention_backend, why_unusable
    from lit_gpt.kernels.optional import ATTENTION_PACKAGES, installed

    if backend in ATTENTION_PACKAGES:
        if not installed(ATTENTION_PACKAGES[backend][0]):
            pytest.skip(f"{ATTENTION_PACKAGES[backend][1]} is not installed")
        why = why_unusable(backend, DEVICE, torch.bfloat16)
        if why is not None:
            pytest.skip(f"{backend} does not work here: {why}")
    seed = n_head * 1000 + T
    q = fresh(2, T, n_head, 64, seed=seed, dtype=torch.bfloat16).requires_grad_()
    k = fresh(2, T, n_kv, 64, seed=seed + 1, dtype=torch.bfloat16).requires_grad_()
    v = fresh(2, T, n_kv, 64, seed=seed + 2, dtype=torch.bfloat16).requires_grad_()
    dy = fresh(2, T, n_head, 64, seed=seed + 3, dtype=torch.bfloat16)
    set_attention_backend(backend)
    try:
        assert backend == "auto" or resolve_backend(DEVICE, torch.bfloat16) == backend
        y = causal_attention(q, k, v)
        y.backward(dy)
        with torch.no_grad():  # xformers takes grouped heads natively only without gradients: that path too
            y_no_grad = causal_attention(q, k, v)
    finally:
        set_attention_backend("auto")
    q64, k64, v64 = as64(q), as64(k), as64(v)
    y_ref = attention_float64(q64, k64, v64)
    y_ref.backward(dy.double())
    assert y.shape == q.shape
    for name, actual, expected in [("out", y, y_ref), ("out without grad", y_no_grad, y_ref), ("dq", q.grad, q64.grad),
                                   ("dk", k.grad, k64.grad), ("dv", v.grad, v64.grad)]:
        err = relative_error(actual, expected)
        assert err < 2e-2, f"{backend} {name}: relative error {err:.3g}"
