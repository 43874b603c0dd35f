"""Composite ops that take another branch on CUDA, run on fake CPU tensors as CUDA runs them.

Some CompositeImplicitAutograd ops decompose differently when their input `is_cuda()`, and the
branches keep different tensors for backward. FakeTensorMode on device cpu follows the CPU's
branch; while `cuda_composites()` is active, kernels registered for these ops at the AutogradCPU
key take CUDA's branch (every fake CPU tensor of the step stands for one on the GPU) and run the
op's own C++ composite kernel otherwise. They call the aten ops of CUDA's branch
through the full dispatcher, so autograd records the same nodes as on CUDA and FakeTensorMode
gives the same outputs.

dropout (aten/src/ATen/native/Dropout.cpp):

    dropout(input, p, train):
        if train and is_fused_kernel_acceptable(input, p): return native_dropout(input, p, train)[0]
        return _dropout_impl(input, p, train)
    is_fused_kernel_acceptable: input.is_cuda() (or xpu, lazy, privateuse1, mps) and 0 < p < 1
                                and input.sym_numel() > 0 and not complex

  The CPU's `_dropout_impl` makes a noise tensor of the input's dtype (empty_like, bernoulli_,
  div_ by 1 - p) and returns input * noise: autograd keeps the float noise tensor for the
  multiplication's backward, beside the output. CUDA's native_dropout (cuda/Dropout.cu) returns
  the output and a one-byte bool mask; its autograd node keeps only the mask, and its backward is
  native_dropout_backward(grad, mask, scale), one output (tools/autograd/derivatives.yaml).
  dropout_, feature and alpha dropout take `_dropout_impl` on CUDA too and are left alone.

softmax.int / log_softmax.int (aten/src/ATen/native/SoftMax.cpp):

    if input.is_cuda() and input is float16 and dtype == float32: _softmax(input, dim, half_to_float=True)
    else: _softmax(input.to(dtype) if dtype else input, dim, False)

  Under float16 autocast CUDA's softmax gets dtype=float32 (autocast's fp32_set_opt_dtype), so it
  makes no float32 copy of its input; its backward gives the float16 gradient directly.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

_aten = torch.ops.aten


def _composite(op, *args):
    """The op's C++ CompositeImplicitAutograd kernel (not `op.decompose()`, which prefers a Python
    decomposition of torch/_decomp: its dropout calls native_dropout for any p > 0, on any device)."""
    return op._op_dk(torch._C.DispatchKey.CompositeImplicitAutograd, *args)


def fused_dropout_acceptable(input: torch.Tensor, p: float) -> bool:
    """Dropout.cpp is_fused_kernel_acceptable, with every tensor on the GPU."""
    return 0 < p < 1 and input.numel() > 0 and not input.is_complex()


def _dropout(input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    if train and fused_dropout_acceptable(input, p):
        return _aten.native_dropout.default(input, p, train)[0]
    return _composite(_aten.dropout.default, input, p, train)


def _half_to_float(input: torch.Tensor, dtype) -> bool:
    return input.dtype == torch.float16 and dtype == torch.float32


def _softmax(input: torch.Tensor, dim: int, dtype=None) -> torch.Tensor:
    if _half_to_float(input, dtype):
        return _aten._softmax.default(input, dim, True)
    return _composite(_aten.softmax.int, input, dim, dtype)


def _log_softmax(input: torch.Tensor, dim: int, dtype=None) -> torch.Tensor:
    if _half_to_float(input, dtype):
        return _aten._log_softmax.default(input, dim, True)
    return _composite(_aten.log_softmax.int, input, dim, dtype)


KERNELS = {"dropout": _dropout, "softmax.int": _softmax, "log_softmax.int": _log_softmax}


@contextmanager
def cuda_composites():
    """Inside the block, the ops of KERNELS take CUDA's branch on CPU tensors (module doc)."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for name, kernel in KERNELS.items():
            lib.impl(name, kernel, "AutogradCPU")
        yield
    finally:
        lib._destroy()
