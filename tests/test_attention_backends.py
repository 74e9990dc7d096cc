"""Choosing the attention backend, on the CPU: the optional packages (flash-attn 2 and 3, xformers) are replaced
by stand-in modules (missing, importable with a broken compiled part, failing at the first call, working), the GPU
by a patched compute capability, and each backend's probe runs on CPU float32 tensors. The backends' numerics on a
GPU are tests/test_kernels.py::test_cuda_attention_backends_match_float64."""

import importlib.machinery
import logging
import sys
import types

import pytest
import torch

from lit_gpt.training.launch import _check_accelerator_env
from lit_gpt.training.loop import describe_accelerators
from lit_gpt.utils import TrainError
from tests.attention_reference import attention_float64, relative_error

CUDA = torch.device("cuda", 0)  # only a name: nothing runs on it (the probes are redirected to the CPU)
PACKAGES = ["flash_attn", "flash_attn_interface", "xformers", "xformers.ops", "xformers.ops.fmha"]


attention = optional = None  # lit_gpt.kernels' modules, imported by the fixture: importing them while the test
# files are collected, before tests/test_kernels.py sets TRITON_INTERPRET=1, would make that whole file skip


@pytest.fixture(autouse=True)
def fake_gpu(monkeypatch):
    """An sm90 GPU with cuDNN, no optional package installed, probes on the CPU; the module's state restored."""
    global attention, optional
    from lit_gpt.kernels import attention, optional

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    for name in PACKAGES:
        monkeypatch.setitem(sys.modules, name, None)  # find_spec answers None: not installed
    real_probe = attention.probe
    monkeypatch.setattr(attention, "probe", lambda attend, device, dtype: real_probe(attend, torch.device("cpu"),
                                                                                     torch.float32))
    monkeypatch.setattr(optional, "_loaded", {})
    monkeypatch.setattr(attention, "_chosen", {})
    monkeypatch.setattr(attention, "_unusable", {})
    monkeypatch.setitem(attention._settings, "backend", "auto")
    monkeypatch.setitem(attention._settings, "repeat_kv", False)


def fake_module(monkeypatch, name, **attrs):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec: installed
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def fake_xformers(monkeypatch, memory_efficient_attention, compiled_error=None):
    """xformers as its package looks from outside: _has_cpp_library, the load exception (with build_info and the
    OSError it came from) and xformers.ops.fmha."""
    lib = types.SimpleNamespace(_cpp_library_load_exception=compiled_error)
    fake_module(monkeypatch, "xformers", __version__="0.0.35", _has_cpp_library=compiled_error is None, _cpp_lib=lib)
    fake_module(monkeypatch, "xformers.ops", swiglu=None)
    fake_module(monkeypatch, "xformers.ops.fmha", memory_efficient_attention=memory_efficient_attention,
                LowerTriangularMask=lambda: "causal")


def xformers_semantics(calls):
    """memory_efficient_attention as xformers documents it: (B, T, H, D), or (B, T, G, H/G, D) for grouped heads
    in the forward pass only (its backward operators reject that layout)."""
    def attend(q, k, v, attn_bias=None):
        assert attn_bias == "causal"
        calls.append((q.dim(), k.stride()))
        if q.dim() == 5:
            assert not torch.is_grad_enabled() or not q.requires_grad, "BMGHK has no backward operator"
            B, T, G, Hg, D = q.shape
            y = attention_float64(*(t.reshape(B, T, G * Hg, D) for t in (q, k, v))).to(q.dtype)
            return y.reshape(B, T, G, Hg, D)
        assert k.shape[2] == q.shape[2], "xformers does not broadcast heads in BMHK"
        return attention_float64(q, k, v).to(q.dtype)
    return attend


def test_auto_without_optional_packages(monkeypatch):
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: cudnn (auto on sm90)"
    attention._chosen.clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: sdpa (auto on sm80)"
    assert attention.resolve_backend(torch.device("cpu"), torch.bfloat16) == "sdpa"
    assert attention.resolve_backend(CUDA, torch.float32) == "sdpa"


def test_a_backend_chosen_without_its_package_is_a_one_line_error(monkeypatch):
    for backend, package in [("xformers", "xformers"), ("flash_attn3", "flash-attn 3"), ("flash_attn", "flash-attn")]:
        with pytest.raises(ValueError, match=f"attention backend '{backend}' needs {package}") as e:
            attention.set_attention_backend(backend)
        assert "\n" not in str(e.value)
    attention._settings["backend"] = "xformers"  # as LIT_GPT_ATTENTION=xformers sets it at import
    with pytest.raises(ValueError, match="needs xformers"):
        attention.resolve_backend(CUDA, torch.bfloat16)
    monkeypatch.setenv("LIT_GPT_ATTENTION", "xformers")
    with pytest.raises(TrainError, match=r"^attention backend 'xformers' needs xformers \(pip install"):
        _check_accelerator_env()  # the trainer stops before starting any process
    monkeypatch.setenv("LIT_GPT_ATTENTION", "flash")
    with pytest.raises(TrainError, match="unknown attention backend 'flash'"):
        _check_accelerator_env()
    monkeypatch.setenv("LIT_GPT_ATTENTION", "auto")
    monkeypatch.setenv("LIT_GPT_SWIGLU", "xformers")
    with pytest.raises(TrainError, match="SwiGLU backend 'xformers' needs xformers"):
        _check_accelerator_env()
    from lit_gpt.kernels.swiglu import check_swiglu_backend

    with pytest.raises(ValueError, match="unknown SwiGLU backend 'liger'"):
        check_swiglu_backend("liger")


def test_xformers_with_a_broken_compiled_part_falls_back_in_one_line(monkeypatch, caplog):
    """xformers imports, but its compiled part was built for another torch: the run goes on with auto's choice, and
    exactly one line (logged once) says so and why."""
    error = RuntimeError("xFormers can't load C++/CUDA extensions.\n  (several lines)")
    error.build_info = types.SimpleNamespace(torch_version="2.10.0+cu128")
    error.__cause__ = OSError("libcudart.so.12: cannot open shared object file")
    fake_xformers(monkeypatch, xformers_semantics([]), compiled_error=error)
    attention.set_attention_backend("xformers")  # installed: accepted
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert attention.resolve_backend(CUDA, torch.bfloat16) == "cudnn"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0] == ("attention: cudnn (auto on sm90; xformers unusable: xformers 0.0.35's compiled part does not "
                        f"load (built for torch 2.10.0+cu128, this is torch {torch.__version__}): OSError: "
                        "libcudart.so.12: cannot open shared object file)")
    assert attention.describe_attention(CUDA, torch.bfloat16) == lines[0]  # what the trainer prints


def test_xformers_failing_at_its_first_call_falls_back(monkeypatch):
    def no_operator(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n ...")

    fake_xformers(monkeypatch, no_operator)
    attention.set_attention_backend("xformers")
    line = attention.describe_attention(CUDA, torch.bfloat16)
    assert line == ("attention: cudnn (auto on sm90; xformers unusable: its first call failed: NotImplementedError: "
                    "No operator found for `memory_efficient_attention_forward` with inputs:)")


@pytest.mark.parametrize("n_head, n_kv, T", [(16, 4, 7), (4, 4, 5), (6, 1, 3)])
def test_xformers_layouts_match_float64(monkeypatch, n_head, n_kv, T):
    """GQA 16/4, MHA, MQA at odd lengths through the xformers backend's layouts: with gradients k/v repeated to
    full heads (4-D), without them grouped 5-D with k/v broadcast by a stride-0 expand (no copy)."""
    calls = []
    fake_xformers(monkeypatch, xformers_semantics(calls))
    attention.set_attention_backend("xformers")
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: xformers (chosen on sm90)"
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, T, h, 8, generator=g, dtype=torch.float64).requires_grad_()
               for h in (n_head, n_kv, n_kv))
    calls.clear()
    y = optional.load_attention("xformers")(q, k, v)
    y.sum().backward()
    with torch.no_grad():
        y_no_grad = optional.load_attention("xformers")(q, k, v)
    grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    y_ref = attention_float64(q, k, v)
    y_ref.sum().backward()
    for actual, expected in [(y, y_ref), (y_no_grad, y_ref), *zip(grads, (q.grad, k.grad, v.grad))]:
        assert relative_error(actual, expected) < 1e-12
    grouped = n_kv != n_head
    assert [dims for dims, _ in calls] == [4, 5 if grouped else 4]
    if grouped:
        assert calls[1][1][3] == 0  # k broadcast along the heads of a group, not copied


def test_flash_attn3_is_taken_when_chosen_and_its_tuple_output_unpacked(monkeypatch):
    def flash_attn_func(q, k, v, causal):  # some releases return (out, softmax_lse)
        assert causal
        return attention_float64(q, k, v).to(q.dtype), None

    fake_module(monkeypatch, "flash_attn_interface", flash_attn_func=flash_attn_func)
    attention.set_attention_backend("flash_attn3")
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: flash_attn3 (chosen on sm90)"
    attention.set_attention_backend("auto")  # auto keeps cuDNN on Hopper until a measurement says otherwise
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: cudnn (auto on sm90)"


def test_auto_takes_flash_attn_2_before_hopper_and_says_why_when_it_is_broken(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    right = lambda q, k, v, causal: attention_float64(q, k, v).to(q.dtype)  # noqa: E731
    fake_module(monkeypatch, "flash_attn", flash_attn_func=right)
    assert attention.describe_attention(CUDA, torch.bfloat16) == "attention: flash_attn (auto on sm80)"
    monkeypatch.setattr(optional, "_loaded", {})
    monkeypatch.setattr(attention, "_unusable", {})
    attention._chosen.clear()
    fake_module(monkeypatch, "flash_attn", flash_attn_func=lambda q, k, v, causal: q * 0)  # wrong numbers
    assert attention.describe_attention(CUDA, torch.bfloat16).startswith(
        "attention: sdpa (auto on sm80; flash_attn unusable: its first call failed: RuntimeError: the probe's output")


def test_the_decided_backend_compiles_without_graph_breaks():
    """After the decision (made at start-up), choosing is a dict lookup that torch.compile traces."""
    q, k, v = torch.randn(1, 5, 4, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    expected = attention.causal_attention(q, k, v)
    compiled = torch.compile(attention.causal_attention, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), expected)


def test_trainer_start_up_line():
    assert describe_accelerators(torch.device("cpu"), "32-true", kernels=False) == "attention: sdpa (cpu)"
    assert describe_accelerators(CUDA, "bf16-mixed", kernels=True) == "attention: cudnn (auto on sm90) | SwiGLU: triton"
    attention._chosen.clear()
    assert describe_accelerators(CUDA, "32-true", kernels=False) == (
        "attention: sdpa (cuda float32: the other backends take half precision CUDA)")


def test_real_xformers_imports_or_says_why_it_cannot_run():
    """With the real package installed (e.g. xformers 0.0.35 on a CPU build of torch, whose compiled part needs the
    CUDA runtime): loading either works or raises Unavailable in one line naming the compiled part."""
    for name in PACKAGES:  # the fixture's "not installed" marks
        sys.modules.pop(name, None)
    pytest.importorskip("xformers", reason="xformers is not installed (the extra lit_gpt[xformers])")
    import xformers

    try:
        optional.load_attention("xformers")
    except optional.Unavailable as e:
        assert not xformers._has_cpp_library
        assert "compiled part does not load" in str(e) and "\n" not in str(e)
    else:
        assert xformers._has_cpp_library
