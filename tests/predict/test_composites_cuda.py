"""Composite ops that branch on is_cuda() (predict/composites_cuda.py): what the CUDA branch keeps,
against the CPU branch, and the same ops on fake CUDA tensors, on hand-made shapes."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.instrument.step_probe import SavedTensorCounter
from enact_bench.predict.composites_cuda import cuda_composites

N = 10 * 100  # elements of the dropped tensor


def _dropout(device: str, policy: bool, p: float = 0.1, train: bool = True):
    with FakeTensorMode():
        x = torch.randn(10, 100, device=device, requires_grad=True)
        counter = SavedTensorCounter(exclude=[x])
        with cuda_composites() if policy else contextlib.nullcontext():
            h = x * 2  # a non-leaf input, as in a network
            with counter.counting():
                y = F.dropout(h, p, training=train)
        return counter.saved_bytes, type(y.grad_fn).__name__, y.dtype


def test_dropout_keeps_a_bool_mask_as_on_cuda():
    cpu_saved, cpu_node, _ = _dropout("cpu", policy=False)
    ours_saved, ours_node, dtype = _dropout("cpu", policy=True)
    cuda_saved, cuda_node, _ = _dropout("cuda", policy=False)
    assert cpu_saved == 4 * N and cpu_node == "MulBackward0"  # the float noise tensor (Dropout.cpp _dropout_impl)
    assert ours_saved == cuda_saved == N  # one byte per element: native_dropout's mask
    assert ours_node == cuda_node == "NativeDropoutBackward0"
    assert dtype == torch.float32


@pytest.mark.parametrize("p, train", [(0.0, True), (1.0, True), (0.1, False)])
def test_dropout_outside_the_fused_kernels_conditions_is_unchanged(p, train):
    # is_fused_kernel_acceptable needs 0 < p < 1, and training: otherwise the composite runs
    assert _dropout("cpu", policy=True, p=p, train=train)[:2] == _dropout("cpu", policy=False, p=p, train=train)[:2]


def test_dropout_backward_is_one_gradient():
    with FakeTensorMode():
        x = torch.randn(10, 100, requires_grad=True)
        with cuda_composites():
            y = F.dropout(x * 2, 0.1)
            tracker = LiveTensorTracker(count_existing=False, record_events=True)
            with tracker:
                (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        allocs = [n for kind, _, n in tracker.events if kind == "alloc"]
    # ones_like (the output gradient), native_dropout_backward's one output, the mul's gradient
    assert allocs == [4 * N, 4 * N, 4 * N]
    assert g.shape == x.shape


def _softmax(device: str, policy: bool):
    with FakeTensorMode():
        x = torch.randn(10, 100, device=device, dtype=torch.float16, requires_grad=True)
        h = x * 2
        tracker = LiveTensorTracker(count_existing=False, record_events=True)
        with cuda_composites() if policy else contextlib.nullcontext(), tracker:
            y = torch.softmax(h, -1, dtype=torch.float32)
        return [n for kind, _, n in tracker.events if kind == "alloc"], y.dtype


def test_float16_softmax_to_float32_upcasts_inside_the_kernel_on_cuda():
    cpu, _ = _softmax("cpu", policy=False)
    ours, dtype = _softmax("cpu", policy=True)
    cuda, _ = _softmax("cuda", policy=False)
    assert cpu == [4 * N, 4 * N]  # a float32 copy of the input, then the output (SoftMax.cpp)
    assert ours == cuda == [4 * N]  # _softmax(half_to_float=True): the output only
    assert dtype == torch.float32
