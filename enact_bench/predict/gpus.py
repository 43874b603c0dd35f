"""Common GPUs, their memory, and what a PyTorch process holds on them beyond its tensors.

Pure Python (no torch import). `device_used_bytes` turns a caching-allocator replay
(`enact_bench.predict.allocator`) into the device memory NVML would show for the process:

    device used = max_memory_reserved (the allocator's segments, cuBLAS workspaces included)
                + the CUDA context (driver state and the loaded kernels; an estimate per GPU)

Memory sizes (`memory_mib`) are the totals NVML reports (nvidia-smi's "MiB / total"), not the
marketing size: an "80 GB" H100 shows 81,559 MiB. Where an OOM message or log gave what CUDA
itself reports as total (cudaMemGetInfo, what torch's OOM message calls "total capacity"),
`cuda_total_mib` has it: the driver keeps the difference. Each figure names its source.

Library workspaces, from PyTorch's aten/src/ATen/cuda/CublasHandlePool.cpp
(parseChosenWorkspaceSize, parseCUDABlasLtWorkspaceSize; read at the 2.x series):
- cuBLAS: CUBLAS_WORKSPACE_CONFIG unset -> 4096 KiB x 8 = 32 MiB on compute capability 9.0
  (H100, H200); elsewhere ":4096:2:16:8", i.e. 4096 KiB x 2 + 16 KiB x 8 = 8,519,680 B.
- cuBLASLt: CUBLASLT_WORKSPACE_SIZE unset -> 1024 KiB (a separate workspace unless
  TORCH_CUBLASLT_UNIFIED_WORKSPACE=1).
Both are allocated through the caching allocator (getNewWorkspace / getNewCUDABlasLtWorkspace
call CUDACachingAllocator::get()->allocate), once per (handle, stream), and kept: so they are part
of max_memory_reserved on a GPU but absent from a CPU-recorded stream. Handles are per thread
(a thread-local pool window); a training step uses two: the forward on the main thread and the
backward on the autograd engine's thread for the device. So `cublas_handles=2` by default.
Not modelled: cuDNN convolution workspaces (transient, through the allocator, chosen per
algorithm), NCCL buffers (DDP), and memory other processes hold.
"""
from __future__ import annotations

from dataclasses import dataclass

from enact_bench.metrics import MIB
from enact_bench.predict.allocator import AllocatorStats, replay

CUBLAS_WORKSPACE_SM90_BYTES = 4096 * 1024 * 8  # 32 MiB: CublasHandlePool.cpp, "32MiB for Hopper"
CUBLAS_WORKSPACE_DEFAULT_BYTES = 4096 * 1024 * 2 + 16 * 1024 * 8  # ":4096:2:16:8" = 8,519,680 B
CUBLASLT_WORKSPACE_BYTES = 1024 * 1024  # parseCUDABlasLtWorkspaceSize: 1024 KiB default
# What the driver keeps of the NVML total where CUDA's own total is not known: an ESTIMATE from the
# three GPUs with both figures in the table (H100 438 MiB, A100 40GB 512 MiB, RTX 4090 316 MiB).
DRIVER_RESERVE_ESTIMATE_MIB = 512

# Sources for the CUDA context estimate (bare context = driver state before kernels are loaded):
CONTEXT_SOURCES = (
    "pytorch/pytorch#86509: lazy module loading (PyTorch's default since 1.13): 287,047,680 B "
    "(274 MiB) used after one small tensor op, against 666,632,192 B loading every kernel",
    "invoke-ai/InvokeAI#9413: RTX 3090, torch 2.7.1+cu128: a bare context holds 256 MiB",
    "unslothai/unsloth-zoo#1053: RTX 6000 Ada, torch 2.10+cu130: 426 MiB after mem_get_info",
    "pytorch/pytorch#107667, #109888 (ptrblck): ~300-400 MB with CUDA >= 11.7 and lazy loading",
)


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model. `context_mib` is an estimate (see CONTEXT_SOURCES): the bare context those
    sources measured plus the kernels a detector's training step loads lazily (cuDNN
    convolutions, cuBLAS GEMMs, PyTorch's own), larger on GPUs with more SMs. Replace it with
    NVML used minus max_memory_reserved measured on the GPU when one is at hand."""

    name: str
    memory_mib: int  # NVML total (nvidia-smi), MiB
    context_mib: float  # CUDA context + lazily loaded kernels, MiB: an ESTIMATE
    compute_capability: tuple[int, int]
    sm_count: int
    memory_source: str
    cuda_total_mib: int | None = None  # cudaMemGetInfo total when a source gave it
    aliases: tuple[str, ...] = ()
    context_is_estimate: bool = True

    def __post_init__(self):
        if not self.name or self.name != self.name.lower() or " " in self.name:
            raise ValueError(f"GpuSpec.name must be a lower-case key without spaces, got {self.name!r}")
        if not isinstance(self.memory_mib, int) or self.memory_mib <= 0:
            raise ValueError(f"GpuSpec {self.name}: memory_mib must be a positive int (NVML total), got {self.memory_mib!r}")
        if not 0 <= self.context_mib < self.memory_mib:
            raise ValueError(f"GpuSpec {self.name}: context_mib must be in [0, memory_mib), got {self.context_mib!r}")
        cc = self.compute_capability
        if not (isinstance(cc, tuple) and len(cc) == 2 and all(isinstance(x, int) and x >= 0 for x in cc)):
            raise ValueError(f"GpuSpec {self.name}: compute_capability must be (major, minor) ints, got {cc!r}")
        if self.sm_count <= 0:
            raise ValueError(f"GpuSpec {self.name}: sm_count must be positive, got {self.sm_count!r}")
        if self.cuda_total_mib is not None and not 0 < self.cuda_total_mib <= self.memory_mib:
            raise ValueError(f"GpuSpec {self.name}: cuda_total_mib must be in (0, memory_mib], got {self.cuda_total_mib!r}")
        if not self.memory_source:
            raise ValueError(f"GpuSpec {self.name}: memory_source must name where memory_mib comes from")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def context_bytes(self) -> int:
        return int(round(self.context_mib * MIB))

    @property
    def usable_mib(self) -> int:
        """What a process can hold (CUDA's total): cuda_total_mib, else the NVML total minus
        DRIVER_RESERVE_ESTIMATE_MIB (an estimate). Device used memory must stay below it."""
        if self.cuda_total_mib is not None:
            return self.cuda_total_mib
        return max(self.memory_mib - DRIVER_RESERVE_ESTIMATE_MIB, 1)

    @property
    def usable_bytes(self) -> int:
        return self.usable_mib * MIB

    @property
    def allocator_limit_bytes(self) -> int:
        """Room for the caching allocator's segments: usable memory minus the CUDA context; the
        `memory_limit_bytes` to replay with to run the allocator's OOM path."""
        return max(self.usable_bytes - self.context_bytes, 0)

    @property
    def cublas_workspace_bytes(self) -> int:
        """parseChosenWorkspaceSize's default for this GPU (32 MiB only on sm_90)."""
        return CUBLAS_WORKSPACE_SM90_BYTES if self.compute_capability == (9, 0) else CUBLAS_WORKSPACE_DEFAULT_BYTES

    def as_dict(self) -> dict:
        return {"name": self.name, "memory_mib": self.memory_mib, "usable_mib": self.usable_mib,
                "context_mib": self.context_mib,
                "context_is_estimate": self.context_is_estimate, "cuda_total_mib": self.cuda_total_mib,
                "compute_capability": list(self.compute_capability), "sm_count": self.sm_count,
                "memory_source": self.memory_source}


_MODAL = "modal.com blog 'Why does an NVIDIA H100 80GB card offer 85.52 GB?' (NVML totals, nvidia-smi)"
_GPU_LIST = (
    GpuSpec("v100-16gb", 16160, 400.0, (7, 0), 80,
            "nvidia-smi 'MiB / 16160MiB', Tesla V100-SXM2-16GB (4paradigm/k8s-vgpu-scheduler#7)",
            aliases=("v100",)),
    GpuSpec("v100-32gb", 32480, 400.0, (7, 0), 80,
            "nvidia-smi 'MiB / 32480MiB', Tesla V100-SXM2 32GB (godweiyang/GrabGPU#5)"),
    GpuSpec("a100-40gb", 40960, 450.0, (8, 0), 108, _MODAL, cuda_total_mib=40448,
            aliases=("a100-40",)),  # 39.50 GiB "total capacity": TianheWu/CoSeR#10
    GpuSpec("a100-80gb", 81920, 450.0, (8, 0), 108, _MODAL, aliases=("a100",)),
    GpuSpec("h100-80gb", 81559, 550.0, (9, 0), 132,
            _MODAL + "; nvidia-smi 'MiB / 81559MiB' (vllm-project/vllm#55169)",
            cuda_total_mib=81121, aliases=("h100",)),  # total_gpu_memory 79.22 GiB: vllm#12126
    GpuSpec("h200-141gb", 143771, 550.0, (9, 0), 132, _MODAL, aliases=("h200",)),
    GpuSpec("l4-24gb", 23034, 400.0, (8, 9), 58, _MODAL, aliases=("l4",)),
    GpuSpec("rtx3090-24gb", 24576, 400.0, (8, 6), 82,
            "nvidia-smi 'MiB / 24576MiB', GeForce RTX 3090 (noonghunna/club-3090#1128)",
            aliases=("rtx3090", "3090")),
    GpuSpec("rtx4090-24gb", 24564, 450.0, (8, 9), 128,
            "nvidia-smi 'MiB / 24564MiB', GeForce RTX 4090 (RLinf/RLinf#255)",
            cuda_total_mib=24248, aliases=("rtx4090", "4090")),  # 23.68 GiB: zai-org/CogVideo#36
)
GPUS: dict[str, GpuSpec] = {g.name: g for g in _GPU_LIST}
_ALIASES: dict[str, str] = {a: g.name for g in _GPU_LIST for a in g.aliases}


def get_gpu(name: str) -> GpuSpec:
    """The GpuSpec for a name or alias (case-insensitive); ValueError listing the known names."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        known = ", ".join(list(GPUS) + sorted(_ALIASES))
        raise ValueError(f"unknown GPU {name!r}; known: {known} (or give the memory with --gpu-mem GIB)")
    return GPUS[key]


def custom_gpu(memory_gib: float, *, context_mib: float = 500.0, compute_capability=(8, 0)) -> GpuSpec:
    """A GPU given only by its memory (`--gpu-mem GIB`): memory_mib = GiB x 1024, context estimated."""
    if not memory_gib > 0:
        raise ValueError(f"GPU memory must be a positive number of GiB, got {memory_gib!r}")
    return GpuSpec(f"custom-{memory_gib:g}gib", int(round(memory_gib * 1024)), context_mib,
                   tuple(compute_capability), 1, f"given: {memory_gib:g} GiB")


def library_workspace_bytes(gpu: GpuSpec, cublas_handles: int = 2) -> list[int]:
    """The cuBLAS and cuBLASLt workspaces PyTorch allocates through the caching allocator, per handle."""
    if cublas_handles < 0:
        raise ValueError(f"cublas_handles must be >= 0, got {cublas_handles}")
    return [gpu.cublas_workspace_bytes, CUBLASLT_WORKSPACE_BYTES] * cublas_handles


def fits(stats: AllocatorStats, gpu: GpuSpec, *, cublas_handles: int = 2) -> bool:
    """Whether the predicted device memory stays within what the process can hold on `gpu`."""
    return device_used_bytes(stats, gpu, cublas_handles=cublas_handles) <= gpu.usable_bytes


def device_used_bytes(stats: AllocatorStats, gpu: GpuSpec, *, cublas_handles: int = 2) -> int:
    """Predicted NVML used memory of the process: reserved peak + workspaces + CUDA context.

    If the replay already held the workspaces (`replay(..., preallocate=library_workspace_bytes(gpu))`,
    the closer model: the step's small tensors then share their segments), they are not added
    again; otherwise they are added as the segments they would open on their own.
    """
    reserved = stats.reserved_peak_bytes
    if stats.preallocated_bytes == 0 and cublas_handles > 0:
        reserved += replay([], preallocate=library_workspace_bytes(gpu, cublas_handles)).reserved_peak_bytes
    return reserved + gpu.context_bytes
