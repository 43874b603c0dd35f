"""Timing: summary statistics against numpy's definitions; the step timer against known sleeps."""
from __future__ import annotations

import time

import pytest
import torch

from enact_bench.measure.timing import StepTimer, summarize_ms, time_steps


def test_summary_of_1_to_100():
    s = summarize_ms([float(i) for i in range(1, 101)], batch_size=4)
    assert s["step_ms_p50"] == pytest.approx(50.5)
    assert s["step_ms_p10"] == pytest.approx(10.9)
    assert s["step_ms_p90"] == pytest.approx(90.1)
    assert s["step_ms_mean"] == pytest.approx(50.5)
    assert s["step_ms_iqr"] == pytest.approx(75.25 - 25.75)
    assert s["step_count"] == 100
    assert s["images_per_s"] == pytest.approx(4 * 1000 / 50.5)


def test_summary_rejects_no_steps():
    with pytest.raises(ValueError, match="iters"):
        summarize_ms([], 1)


def test_sleep_is_timed_and_setup_is_not():
    calls = []

    def step():
        calls.append("step")
        time.sleep(0.02)

    def before_each(i):
        calls.append(i)
        time.sleep(0.1)  # outside the timed region

    first, times = time_steps(step, warmup=2, iters=3, device="cpu", before_each=before_each)
    assert calls == [0, "step", 1, "step", 2, "step", 3, "step", 4, "step"]
    assert len(times) == 3
    assert all(20.0 <= t < 100.0 for t in times + [first])  # sleep counted, set-up not


def test_warmup_must_be_positive():
    with pytest.raises(ValueError, match="warmup"):
        time_steps(lambda: None, warmup=0, iters=1, device="cpu")


def test_cpu_timer_uses_perf_counter():
    assert StepTimer("cpu").clock == "perf_counter"


@pytest.mark.gpu
def test_cuda_events_agree_with_a_synchronised_wall_clock():
    timer = StepTimer("cuda")
    assert timer.clock == "cuda_events"
    a = torch.randn(4096, 4096, device="cuda")
    work = lambda: [a @ a for _ in range(20)]  # noqa: E731
    timer.time(work)  # warm-up (cuBLAS handles)
    ms_events = timer.time(work)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    work()
    torch.cuda.synchronize()
    ms_wall = (time.perf_counter() - t0) * 1e3
    assert ms_events > 0 and ms_events == pytest.approx(ms_wall, rel=0.3)
