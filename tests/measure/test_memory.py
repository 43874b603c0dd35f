"""Memory trackers: CPU peak to the byte, null-with-reason without CUDA/NVML, CUDA peaks on GPU."""
from __future__ import annotations

import resource

import pytest
import torch

from enact_bench.measure.memory import (CUDA_FIELDS, NVML_FIELDS, CpuPeakMemory, CudaPeakMemory, NvmlSampler,
                                        rss_peak_mib)


def test_cpu_peak_counts_known_allocations_to_the_byte():
    with CpuPeakMemory() as m:
        a = torch.empty(1000, dtype=torch.float32)  # 4,000 bytes
        b = torch.empty(1000, dtype=torch.float64)  # 8,000 bytes  -> peak +12,000
        del a
        c = torch.empty(500, dtype=torch.float32)  # 2,000 bytes while b (8,000) lives: 10,000 < 12,000
        del b, c
    f = m.fields
    assert f["cpu_tracked_peak_bytes"] - f["cpu_tracked_start_bytes"] == 12_000
    assert f["cpu_tracked_peak_mib"] == f["cpu_tracked_peak_bytes"] / 2**20


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_cuda_fields_are_null_with_reason_without_cuda():
    with CudaPeakMemory("cuda") as m:
        torch.empty(10)
    assert all(m.fields[k] is None for k in CUDA_FIELDS)
    assert m.null_reasons == {k: "no CUDA device" for k in CUDA_FIELDS}


def test_cuda_fields_are_null_on_a_cpu_device():
    m = CudaPeakMemory("cpu")
    with m:
        pass
    assert all(m.fields[k] is None for k in CUDA_FIELDS) and set(m.null_reasons) == set(CUDA_FIELDS)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_nvml_sampler_null_with_reason_where_unusable(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA machine: covered by the gpu test")
    with NvmlSampler(device) as s:
        pass
    assert all(v is None for v in s.fields.values())
    reasons = s.reasons()
    assert set(reasons) == set(NVML_FIELDS) and all(reasons.values())


def test_rss_peak_is_the_kernels_high_water_mark():
    with open("/proc/self/status") as f:
        hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    assert rss_peak_mib() == pytest.approx(hwm_kib / 1024, abs=2.0)
    assert rss_peak_mib() * 1024 >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - 1


@pytest.mark.gpu
def test_cuda_peak_and_nvml_see_a_known_allocation():
    n = 256 * 2**20 // 4  # 256 MiB of float32
    before_mib = torch.cuda.memory_allocated() / 2**20  # tensors alive before count in the peak too
    with NvmlSampler("cuda") as s, CudaPeakMemory("cuda") as m:
        x = torch.empty(n, device="cuda")
        x.fill_(1.0)
        del x
    assert 256.0 <= m.fields["mem_peak_alloc_mib"] - before_mib < 257.0
    assert m.fields["mem_start_alloc_mib"] == pytest.approx(before_mib)
    assert m.fields["mem_peak_reserved_mib"] >= 256.0
    assert s.fields["nvml_device_used_peak_mib"] >= 256.0
