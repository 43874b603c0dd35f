"""Tensors built from Python data on the CUDA target (predict/host_tensors.py): host memory unless
copied to the device, as on fake CUDA tensors (predict/fake_cuda_reference.py counts CUDA tensors
only)."""
from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.predict.cuda_policy import step_kernels
from enact_bench.predict.fake_cuda_reference import _CudaTensorTracker


def _allocs(device: str, target: str | None):
    """Allocations seen while building tensors from Python data next to a tensor on `device`."""
    with FakeTensorMode():
        x = torch.zeros(8, 4, dtype=torch.bool, device=device)
        kernels = step_kernels(target) if target else contextlib.nullcontext(None)
        with kernels as k:
            tracker = (_CudaTensorTracker if device == "cuda" else LiveTensorTracker)(
                count_existing=False, record_events=True)
            if k is not None:
                tracker.host_ops = k.host_ops
            with tracker:
                tracker._track(x)  # alive before, as a step's live tensors are counted in
                on_device = torch.as_tensor([1, 2, 3], device=x.device)  # noqa: F841 -- a host tensor, copied
                listed = torch.tensor([[1.0, 2.0]], device=x.device).view(2)  # noqa: F841
                on_host = torch.as_tensor([1, 2, 3])  # noqa: F841 -- stays on the host
                x[:2, :2] = True  # a Python scalar: a 0-dim host tensor, no copy
        return [n for kind, _, n in tracker.events if kind == "alloc"][1:]  # after x


def test_only_the_copies_to_the_device_are_counted_as_on_cuda():
    cuda = _allocs("cuda", None)
    ours = _allocs("cpu", "cuda")
    assert cuda == ours == [24, 8]  # the two copies: int64 x 3, float32 x 2
    assert _allocs("cpu", "cpu") == [24, 8, 24, 1]  # the CPU target counts every tensor it sees
