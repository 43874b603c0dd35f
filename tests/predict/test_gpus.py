"""The GPU table and the device-memory sum (figures from the sources named in predict/gpus.py)."""
import pytest

from enact_bench.predict.allocator import AllocatorStats, replay
from enact_bench.predict.gpus import (CUBLAS_WORKSPACE_DEFAULT_BYTES, DRIVER_RESERVE_ESTIMATE_MIB, GPUS,
                                      GpuSpec, custom_gpu, device_used_bytes, fits, get_gpu,
                                      library_workspace_bytes)

MIB = 2**20


def test_table_has_the_common_gpus_with_nvml_totals():
    for name in ("v100-16gb", "v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb",
                 "l4-24gb", "rtx3090-24gb", "rtx4090-24gb"):
        assert name in GPUS
    assert get_gpu("H100").memory_mib == 81559  # NVML total, not 80 * 1024
    assert get_gpu("a100-40gb").memory_mib == 40960
    assert all(g.context_is_estimate for g in GPUS.values())


def test_unknown_gpu_is_one_line_listing_the_names():
    with pytest.raises(ValueError) as e:
        get_gpu("tpu-v5")
    msg = str(e.value)
    assert "\n" not in msg and "h100-80gb" in msg and "--gpu-mem" in msg


def test_spec_validation_says_what_to_fix():
    with pytest.raises(ValueError, match="memory_mib"):
        GpuSpec("x", 0, 1.0, (8, 0), 1, "s")
    with pytest.raises(ValueError, match="lower-case"):
        GpuSpec("H100", 10, 1.0, (8, 0), 1, "s")
    assert custom_gpu(24).memory_mib == 24576


def test_workspaces_follow_cublas_handle_pool_defaults():
    assert get_gpu("h100").cublas_workspace_bytes == 32 * MIB  # sm_90
    assert get_gpu("a100").cublas_workspace_bytes == CUBLAS_WORKSPACE_DEFAULT_BYTES == 8_519_680
    assert library_workspace_bytes(get_gpu("h100"), 2) == [32 * MIB, MIB, 32 * MIB, MIB]


def test_device_used_adds_workspace_segments_and_context_once():
    h100 = get_gpu("h100")
    stats = replay([("alloc", 1, 100 * MIB)])  # one 100 MiB segment
    # workspaces alone: two own 32 MiB segments + both 1 MiB Lt workspaces in one 2 MiB small segment
    expect = 100 * MIB + 66 * MIB + h100.context_bytes
    assert device_used_bytes(stats, h100) == expect
    pre = replay([("alloc", 1, 100 * MIB)], preallocate=library_workspace_bytes(h100))
    assert device_used_bytes(pre, h100) == pre.reserved_peak_bytes + h100.context_bytes == expect
    assert device_used_bytes(AllocatorStats(0, 0, 0, 0), h100, cublas_handles=0) == h100.context_bytes


def test_usable_memory_and_fits():
    h100, h200 = get_gpu("h100-80gb"), get_gpu("h200")
    assert h100.usable_mib == 81121  # CUDA's 79.22 GiB total, below NVML's 81,559 MiB
    assert h200.usable_mib == 143771 - DRIVER_RESERVE_ESTIMATE_MIB
    assert h100.allocator_limit_bytes == h100.usable_bytes - h100.context_bytes
    room = h100.usable_bytes - h100.context_bytes - 66 * MIB  # minus the workspaces' 66 MiB of segments
    assert fits(AllocatorStats(0, room, 0, 1), h100)
    assert not fits(AllocatorStats(0, room + 2 * MIB, 0, 1), h100)
