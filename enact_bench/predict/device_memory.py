"""Device memory from an allocation stream: the one place a fake step's ordered
("alloc" | "free", key, nbytes) events become `max_memory_allocated`, `max_memory_reserved` and
the device memory NVML would show on a given GPU.

The events go through the caching-allocator model (predict/allocator.py), with the GPU's
library workspaces (cuBLAS, cuBLASLt) allocated first, as a process's first matmul does; the
CUDA context and those workspaces are then added to the reserved peak (predict/gpus.py).
Without a GPU the stream is replayed alone: allocated and reserved, no device figure.
"""
from __future__ import annotations

from dataclasses import dataclass

from enact_bench.predict.allocator import AllocatorStats, replay
from enact_bench.predict.gpus import GpuSpec, device_used_bytes, library_workspace_bytes


@dataclass(frozen=True)
class DeviceMemory:
    """What the allocator model and the GPU make of one stream (bytes; all estimates)."""

    stats: AllocatorStats
    device_used_bytes: int | None  # None without a GPU

    @property
    def alloc_peak_bytes(self) -> int:
        return self.stats.alloc_peak_bytes

    @property
    def reserved_peak_bytes(self) -> int:
        return self.stats.reserved_peak_bytes


def device_memory(events, gpu: GpuSpec | None) -> DeviceMemory:
    """The stream `events` replayed through the allocator model on `gpu` (or on no GPU)."""
    if gpu is None:
        return DeviceMemory(replay(events), None)
    stats = replay(events, preallocate=library_workspace_bytes(gpu))
    return DeviceMemory(stats, device_used_bytes(stats, gpu))
