"""The loss scaler of float16 training (torch.amp.GradScaler), on fake tensors.

float16 autocast trains with a GradScaler (bfloat16 needs none): `scaler.scale(loss).backward()`,
`scaler.unscale_(optimizer)` before gradient clipping, `scaler.step(optimizer)`,
`scaler.update()`. What it keeps on the device (torch/amp/grad_scaler.py): the scale (float32)
and the growth tracker (int32), 0-dim tensors alive for the whole run; per step the scaled loss,
the inverse scale (computed in float64, then float32), `found_inf` and one copy each of it and of
the inverse scale per device (`_MultiDeviceReplicator.get` copies even to the same device), and
the in-place `_amp_foreach_non_finite_check_and_unscale_` over the gradients and
`_amp_update_scale_`.

`FakeStepScaler` is torch.amp.GradScaler itself, so those allocations are PyTorch's own, with one
change for fake tensors: `_maybe_opt_step` reads found_inf with `.item()` to skip the step on an
overflow, a value fake tensors do not have; here the step is always taken, as in every step
without an overflow. Fake CPU tensors stand for the GPU's, so the scaler is made for device
"cpu" (its code is the same for both devices but for MPS).
"""
from __future__ import annotations

import weakref

import torch


class FakeStepScaler(torch.amp.GradScaler):
    """GradScaler whose step is always taken (no value to test for inf/NaN under fake tensors)."""

    def __init__(self, **kwargs):
        super().__init__("cpu", **kwargs)
        # created now, as the first step's scale() would: the step measured is a later one
        self._lazy_init_scale_growth_tracker(torch.device("cpu"))

    def _maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        return optimizer.step(*args, **kwargs)

    def state_tensors(self) -> list[torch.Tensor]:
        """What the scaler keeps between steps: the scale and the growth tracker."""
        return [t for t in (self._scale, self._growth_tracker) if t is not None]


_SCALERS: "weakref.WeakKeyDictionary[torch.optim.Optimizer, FakeStepScaler]" = weakref.WeakKeyDictionary()


def scaler_for(optimizer: torch.optim.Optimizer) -> FakeStepScaler:
    """The scaler that trains with `optimizer`, made at the first call (under the fake mode the
    step runs in) and kept as long as the optimizer, as a training loop keeps its scaler."""
    scaler = _SCALERS.get(optimizer)
    if scaler is None:
        scaler = _SCALERS[optimizer] = FakeStepScaler()
    return scaler
