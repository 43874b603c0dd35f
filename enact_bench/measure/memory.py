"""Peak memory of a measured region: CUDA allocator peaks, NVML samples, CPU live tensors, RSS.

Every reader returns `(fields, null_reasons)`: a field that could not be measured is None and
its reason is in null_reasons; never a fake zero (torch.cuda.max_memory_allocated() returns 0
on a machine without CUDA: that is not a measurement).
"""
from __future__ import annotations

import gc
import os
import resource
import sys
import threading

import torch

from enact_bench import metrics as metrics_schema
from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.metrics import MIB


# the fields each tracker writes (enact_bench/metrics.py is the one list of metric names)
CUDA_FIELDS = metrics_schema.names(tracker="CudaPeakMemory")
NVML_FIELDS = metrics_schema.names(tracker="NvmlSampler")
CPU_FIELDS = metrics_schema.names(tracker="CpuPeakMemory")


class CudaPeakMemory:
    """`with CudaPeakMemory(device) as m: ...`, then m.fields / m.null_reasons.

    Around the region: gc.collect, synchronize, empty_cache, reset_peak_memory_stats; after it:
    synchronize, then max_memory_allocated and max_memory_reserved in MiB; mem_start_alloc_mib is
    memory_allocated at the start (parameters, gradients, optimizer state, inputs), so that
    peak - start is the region's own peak.
    """

    def __init__(self, device="cuda"):
        self.device = torch.device(device)
        self.fields = {k: None for k in CUDA_FIELDS}
        self.null_reasons: dict[str, str] = {}
        self.available = self.device.type == "cuda" and torch.cuda.is_available()
        if not self.available:
            why = "no CUDA device" if not torch.cuda.is_available() else f"device is {self.device.type}"
            self.null_reasons = {k: why for k in CUDA_FIELDS}

    def __enter__(self):
        if self.available:
            gc.collect()
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.available:
            torch.cuda.synchronize(self.device)
            self.fields = {
                "mem_peak_alloc_mib": torch.cuda.max_memory_allocated(self.device) / MIB,
                "mem_peak_reserved_mib": torch.cuda.max_memory_reserved(self.device) / MIB,
                "mem_start_alloc_mib": self._start / MIB,  # alive when the region began
            }
        return False


class NvmlSampler:
    """A thread that reads NVML every `interval_s` (10 ms): device used memory and this
    process's used memory; peaks in MiB. Missing NVML or CUDA -> None with a reason."""

    def __init__(self, device="cuda", interval_s: float = 0.01):
        self.interval_s = interval_s
        self.device = torch.device(device)
        self.device_peak_bytes: int | None = None
        self.process_peak_bytes: int | None = None
        self.samples = 0
        self.null_reasons: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = None
        self._handle = None
        self._init()

    def _init(self) -> None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            why = "no CUDA device" if not torch.cuda.is_available() else f"device is {self.device.type}"
            self.null_reasons = {k: why for k in NVML_FIELDS}
            return
        try:
            import pynvml
            pynvml.nvmlInit()
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, driver errors
            self.null_reasons = {k: f"NVML unavailable: {type(e).__name__}: {e}" for k in NVML_FIELDS}
            return
        self._nvml = pynvml
        self._handle = self._device_handle(pynvml)

    def _device_handle(self, pynvml):
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        try:  # NVML indexes all GPUs; CUDA_VISIBLE_DEVICES may renumber them: match by PCI bus
            bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
        except Exception:
            return pynvml.nvmlDeviceGetHandleByIndex(index)

    def _sample(self) -> None:
        nv = self._nvml
        used = nv.nvmlDeviceGetMemoryInfo(self._handle).used
        self.device_peak_bytes = max(self.device_peak_bytes or 0, used)
        pid = os.getpid()
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(self._handle):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                self.process_peak_bytes = max(self.process_peak_bytes or 0, proc.usedGpuMemory)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception as e:  # a driver hiccup ends sampling, not the run
                self.null_reasons.setdefault("nvml_sampler", f"{type(e).__name__}: {e}")
                return
            self._stop.wait(self.interval_s)

    def start(self) -> "NvmlSampler":
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            try:
                self._sample()  # one last reading at the end of the region
            except Exception:
                pass
            self._thread = None

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def fields(self) -> dict:
        dev = self.device_peak_bytes / MIB if self.device_peak_bytes is not None else None
        proc = self.process_peak_bytes / MIB if self.process_peak_bytes is not None else None
        return {"nvml_device_used_peak_mib": dev, "nvml_process_used_peak_mib": proc}

    def reasons(self) -> dict:
        """null_reasons for the fields that are None."""
        out = {k: v for k, v in self.null_reasons.items() if k in NVML_FIELDS}
        if self._nvml is not None:
            err = self.null_reasons.get("nvml_sampler")
            if self.device_peak_bytes is None:
                out["nvml_device_used_peak_mib"] = err or "NVML took no sample"
            if self.process_peak_bytes is None:
                out["nvml_process_used_peak_mib"] = err or (
                    "NVML did not list this process (another PID namespace, e.g. a container, "
                    "or the driver does not report per-process memory)")
        return {k: v for k, v in out.items() if self.fields[k] is None}


class CpuPeakMemory:
    """`with CpuPeakMemory() as m: ...`: exact peak of live tensor bytes (LiveTensorTracker,
    counting the tensors alive at the start, like max_memory_allocated on CUDA)."""

    def __init__(self):
        self.tracker = LiveTensorTracker(count_existing=True)
        self.fields = {k: None for k in CPU_FIELDS}

    def __enter__(self):
        gc.collect()
        self.tracker.__enter__()
        return self

    def __exit__(self, *exc):
        self.tracker.__exit__(*exc)
        t = self.tracker
        self.fields = {"cpu_tracked_peak_bytes": t.peak_bytes, "cpu_tracked_peak_mib": t.peak_bytes / MIB,
                       "cpu_tracked_late_bytes": t.late_bytes,
                       "cpu_tracked_start_bytes": t.start_bytes}
        return False


def rss_peak_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss), in MiB. Whole-process:
    includes Python, libraries and the allocator's cache; labelled as RSS, not tensor memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB  # bytes on macOS, KiB on Linux


