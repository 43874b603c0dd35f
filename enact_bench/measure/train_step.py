"""The exact live-tensor peak of one steady-state training step on the tensors given: the CPU's
figure that means what `max_memory_allocated` means on CUDA (parameters, buffers, gradients,
optimizer state and inputs counted in, then every storage the step creates or frees).

`measure_train_step` warms up (a first training step, or the optimizer state primed), then
measures the second step under the instruments asked for (instrument/tracked_step.py). It runs
the kernels of the tensors' device as dispatched: for what a CUDA GPU would keep, without one,
use predict/fake_step.py. Run under FakeTensorMode it gives the same figures for fake tensors
(StepMeasure.fake then says so).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from torch import nn

from enact_bench.instrument.tracked_step import StepInstruments, StepMeasure, warm_up
from enact_bench.train.optim import make_optimizer


def _is_fake(model: nn.Module) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return any(isinstance(p, FakeTensor) for p in model.parameters())


def measure_train_step(model: nn.Module, criterion: nn.Module, batch, *, optimizer=None,
                       clip_max_norm: float = 0.1, warmup: str = "step", count_flops: bool = True,
                       probes: bool = True, breakdown: bool = False,
                       autocast_dtype: str | None = None) -> StepMeasure:
    """Warm-up ("step" | "prime" | "none", instrument/tracked_step.warm_up), then the measured
    step. probes: the saved-for-backward counter and the op recorder; breakdown: the peak's
    attribution (instrument/breakdown.py) and the event stream; autocast_dtype ("bfloat16",
    "float16"): the forward and loss under the CPU's torch.autocast."""
    t0 = time.perf_counter()
    model.train()
    criterion.train()
    optimizer = optimizer or make_optimizer(model)
    amp = (lambda: torch.autocast("cpu", dtype=getattr(torch, autocast_dtype))) if autocast_dtype else nullcontext
    warm_up(model, criterion, optimizer, batch, warmup, clip_max_norm=clip_max_norm, autocast=amp)
    fake = _is_fake(model)
    inst = StepInstruments.build(model, criterion, optimizer, batch, probes=probes, count_flops=count_flops,
                                 breakdown=breakdown, fake=fake, autocast=amp)
    start = inst.run(model, criterion, optimizer, batch, clip_max_norm=clip_max_norm)
    return inst.measure(model, batch, start, t0=t0, fake=fake)
