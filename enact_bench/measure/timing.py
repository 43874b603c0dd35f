"""Step timing: CUDA events on GPU, perf_counter on CPU; robust summary statistics.

The first (warm-up) step is timed on its own (`first_step_ms`: lazy initialisation, optimizer
state allocation, cudnn autotuning); the remaining warm-up steps are not reported; the timed
steps give p50 (median), p10, p90, mean, IQR (p75 - p25), count, and images/s from the median.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


class StepTimer:
    """`timer.time(fn) -> ms` for one call of fn: CUDA events (synchronised at the end) when
    the device is CUDA, else time.perf_counter."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.clock = "cuda_events" if self.cuda else "perf_counter"

    def time(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def summarize_ms(times_ms: list[float], batch_size: int) -> dict:
    """Summary of timed steps (ms). Percentiles by linear interpolation (numpy's default)."""
    if not times_ms:
        raise ValueError("no timed steps to summarise (iters must be >= 1)")
    a = np.asarray(times_ms, dtype=np.float64)
    p10, p25, p50, p75, p90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {
        "step_ms_p50": float(p50), "step_ms_p10": float(p10), "step_ms_p25": float(p25),
        "step_ms_p75": float(p75), "step_ms_p90": float(p90),
        "step_ms_mean": float(a.mean()), "step_ms_iqr": float(p75 - p25), "step_count": int(a.size),
        "images_per_s": float(batch_size * 1e3 / p50) if p50 > 0 else None,
    }


def time_steps(step: Callable[[], object], *, warmup: int, iters: int, device,
               before_each: Callable[[int], object] | None = None) -> tuple[float, list[float]]:
    """Run `warmup` untimed-but-first-timed steps then `iters` timed ones.

    Returns (first_step_ms, timed step times in ms). `before_each(i)` runs outside the timed
    region (e.g. moving the next batch to the device)."""
    if warmup < 1:
        raise ValueError("warmup must be >= 1 (the first step is reported on its own)")
    timer = StepTimer(device)
    first = None
    for i in range(warmup):
        if before_each:
            before_each(i)
        ms = timer.time(step)
        first = ms if first is None else first
    times = []
    for i in range(iters):
        if before_each:
            before_each(warmup + i)
        times.append(timer.time(step))
    return first, times
