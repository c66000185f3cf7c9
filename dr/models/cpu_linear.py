"""fp32 linear layers on CPU through oneDNN's matrix product instead of the default BLAS.

PyTorch's CPU build computes an fp32 ``nn.Linear`` with MKL's ``sgemm``. On AMD processors MKL
runs its AVX2 kernels even where AVX-512 is there; oneDNN (also linked into PyTorch, used for
bf16) dispatches on the instruction set itself. On the 2-core AMD EPYC (AVX-512) of our
benchmarks, the products of all-MiniLM-L6-v2 at 16,384 tokens ran at 157-205 GFLOP/s with MKL
and 283-456 GFLOP/s with oneDNN; restricted to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) the two were
within 5-15% of each other. It is the same fp32 arithmetic in another summation order (results
differ from MKL's in the last bits, about 1e-6 relative, as two BLAS libraries do), not reduced
precision.

What runs through oneDNN (``torch.ops.mkldnn._linear_pointwise``, the kernel PyTorch's own
compiler uses for CPU linear layers): the forward product ``x W^T + b`` and, in training, the
input gradient ``g W``. The weight gradient ``g^T x`` stays with MKL (oneDNN was not faster for
that layout in our measurements). Anything else (a GPU, bf16 autocast, other dtypes, tracing,
ONNX export, compilation, a PyTorch build without the kernel) takes ``torch.nn.functional.linear``.

``DR_CPU_LINEAR=aten`` turns it off for a whole process (and the workers it starts);
``module.cpu_linear`` sets it for a training run.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("onednn", "aten")
_KERNEL: bool | None = None


def kernel_available() -> bool:
    """Whether this PyTorch build has oneDNN's linear kernel and it agrees with ``F.linear`` on a
    small product (checked once per process)."""
    global _KERNEL
    if _KERNEL is None:
        try:
            op = torch.ops.mkldnn._linear_pointwise
            a, w, b = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
            _KERNEL = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                op(a, w, b, "none", [], ""), F.linear(a, w, b), atol=1e-5
            )
        except (AttributeError, RuntimeError):
            _KERNEL = False
    return _KERNEL


def default_mode() -> str:
    """``DR_CPU_LINEAR`` (``onednn`` or ``aten``), ``onednn`` when unset."""
    mode = os.environ.get("DR_CPU_LINEAR", "onednn").strip().lower() or "onednn"
    if mode not in MODES:
        raise ValueError(f"DR_CPU_LINEAR must be one of {MODES}, got {mode!r}")
    return mode


def _special_context() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or exporting()
    )


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """oneDNN takes this product: fp32 tensors on CPU, no autocast, no tracing/export/compilation."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not _special_context()
        and kernel_available()
    )


def _product(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, weight, bias, "none", [], "")


def _rows_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`_product` over the rows of an ``[..., in]`` input, reshaped back to ``[..., out]``."""
    return _product(x.reshape(-1, x.shape[-1]), weight, bias).reshape(*x.shape[:-1], weight.shape[0])


def matmul_t(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ weight.T + bias`` for a 2-D ``a``, through oneDNN where :func:`usable`; no autograd
    (for the inside of custom backward passes and inference)."""
    if usable(a, weight):
        return _product(a, weight, bias)
    return F.linear(a, weight, bias)


class _Linear(torch.autograd.Function):
    """``x W^T + b`` with oneDNN's forward product and input gradient; the saved tensors are those
    of ``F.linear`` (the input and the weight)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x.reshape(-1, x.shape[-1]), weight)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return _rows_product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _product(g, weight.t(), None).reshape(ctx.x_shape) if need_x else None
        grad_w = g.t() @ rows if need_w else None
        grad_b = g.sum(0) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` with oneDNN's products where :func:`usable` (see the module docstring)."""
    if not usable(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _Linear.apply(x, weight, bias)
    return _rows_product(x, weight, bias)


class _LinearForward:
    """An ``nn.Linear``'s forward through :func:`linear`. A plain object in the instance's
    ``__dict__``, so the module pickles and deep-copies with the setting and its state dict is
    unchanged."""

    def __init__(self, module: nn.Linear):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.module.weight, self.module.bias)


def set_cpu_linear(model: nn.Module, mode: str | None = None) -> int:
    """Route every ``nn.Linear`` of ``model`` through oneDNN on CPU (``"onednn"``) or restore
    PyTorch's own forward (``"aten"``); ``None``: :func:`default_mode`. Returns how many layers
    were set (0 where the kernel is missing and nothing was changed)."""
    mode = default_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"cpu_linear must be one of {MODES}, got {mode!r}")
    enable = mode == "onednn" and kernel_available()
    changed = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        if enable:
            module.__dict__["forward"] = _LinearForward(module)
        elif "forward" in module.__dict__:
            del module.__dict__["forward"]
        else:
            continue
        changed += 1
    return changed
