"""Tensors built from Python data, as a CUDA run places them (the CUDA target of the estimate).

`torch.tensor(data)`, `torch.as_tensor(data)` and a Python scalar assigned into a tensor
(`mask[:h, :w] = False`) build a tensor on the host (torch/csrc/utils/tensor_new.cpp
internal_new_from_data: filled on the CPU, then `aten::lift_fresh`). With `device=` a GPU, it is
then copied there (`.to(device)`, an `aten::_to_copy` on fake CUDA tensors); without, it stays on
the host, and a 0-dim host tensor may take part in a GPU op (a fill) without a copy. On fake
CPU tensors the copy to the "device" cpu is a no-op, so the host tensor alone is seen.

The CUDA target therefore (1) counts no `aten::lift_fresh` output, nor any view of it, as device
memory (`HOST_OPS`, given to the live-tensor tracker), and (2) inside `cuda_host_copies()` makes
`torch.tensor` / `torch.as_tensor` called with a `device` and non-tensor data return a copy of
the host tensor, which is counted: the GPU's copy, of the same bytes and lifetime.

Not modelled: a host tensor moved to the GPU later with `.to(device)`, and tensors computed from
host tensors alone, are counted as the device's (on the five detector families nothing does that
in the forward and loss: tests/predict/test_fake_cuda_reference.py); `torch.tensor(...,
requires_grad=True)` keeps the host tensor (a copy would not be a leaf).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

HOST_OPS = frozenset({torch.ops.aten.lift_fresh.default})


def _copied(make):
    def wrapper(data, *args, **kwargs):
        out = make(data, *args, **kwargs)
        device = kwargs.get("device", args[1] if make is _as_tensor and len(args) > 1 else None)
        if device is not None and not isinstance(data, torch.Tensor) and not out.requires_grad:
            return out.clone()  # the copy to the GPU; the host tensor is freed
        return out
    wrapper.__wrapped__ = make
    return wrapper


_tensor, _as_tensor = torch.tensor, torch.as_tensor


@contextmanager
def cuda_host_copies():
    """Inside the block, torch.tensor / torch.as_tensor with a device copy to it (module doc).
    Not thread-safe (it swaps module attributes of torch)."""
    torch.tensor, torch.as_tensor = _copied(_tensor), _copied(_as_tensor)
    try:
        yield
    finally:
        torch.tensor, torch.as_tensor = _tensor, _as_tensor
