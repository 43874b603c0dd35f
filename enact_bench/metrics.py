"""The one metric schema: every metric a record's `metrics` may hold, with its unit, the code that
writes it, whether real-tensor and/or fake-tensor (FakeTensorMode estimate) cases write it, the
modes it applies to, its report label and its regression-gate rule.

Everything else is derived from SCHEMA: the harness's record fields (`record_metric_names`), the
trackers' field tuples (measure/memory.py), the fields a fake case cannot measure, the report's
labels and memory table (report/labels.py), the gate's tolerances (regress.py), and the metric
table of docs/CONTRACTS.md is held to it by a test (`python -m enact_bench.metrics` prints it).
Adding a metric = the tracker that writes it + one entry here.

Plain Python, no torch: the report and the gate import it.
"""
from __future__ import annotations

from dataclasses import dataclass

MIB = 2**20  # the unit of every *_mib field: a mebibyte, 2^20 bytes (the one definition)

TRAIN_INFER = ("train", "infer")
TRAIN = ("train",)
UNITS = ("count", "MiB", "bytes", "ms", "images/s", "GFLOPs", "GMACs", "tokens", "names", "text", "flag")
CHANGES = ("pct", "pts")
GATE_KINDS = ("exact", "noisy", "set")

# regression-gate rules (regress.py): "exact" fails on any growth beyond `rel` (0: any growth);
# "noisy" allows max(rel * base, abs, spread_k * spread); "set" compares the set of names
EXACT = {"kind": "exact", "rel": 0.0}
SET = {"kind": "set"}


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # one of UNITS; also the last part of the name where it has one (_mib, _bytes, _ms)
    tracker: str  # the code that writes it
    meaning: str
    real: bool = True  # written by real-tensor cases
    fake: bool = False  # written by `fake = true` cases (the FakeTensorMode estimate)
    modes: tuple[str, ...] = TRAIN_INFER  # where it can be measured (elsewhere: null with a reason)
    label: str | None = None  # report label; None: not in the report's tables
    change: str = "pct"  # how the report gives a change: percent, or points
    memory_table: bool = False  # a column of the report's memory table (in schema order)
    plot_rank: int | None = None  # preference as the memory reading of a plot (0 first)
    gate_cpu: dict | None = None  # regression-gate rule on a CPU baseline (None: not gated)
    gate_gpu: dict | None = None  # ... on a CUDA baseline
    spread_from: str | None = None  # a record's own spread for the gate's noise (e.g. the IQR)
    torchrun_only: bool = False  # only records of `launcher = "torchrun"` cases (DDP ranks) have it

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"metric name {self.name!r}: lower-case identifier expected")
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name}: unit {self.unit!r} is not one of {UNITS}")
        if not (self.real or self.fake):
            raise ValueError(f"metric {self.name}: written by no case (set real and/or fake)")
        if not self.modes or set(self.modes) - set(TRAIN_INFER):
            raise ValueError(f"metric {self.name}: modes must be a non-empty subset of {TRAIN_INFER}")
        if self.change not in CHANGES:
            raise ValueError(f"metric {self.name}: change must be one of {CHANGES}")
        if (self.memory_table or self.plot_rank is not None) and self.label is None:
            raise ValueError(f"metric {self.name}: a report column needs a label")
        for gate in (self.gate_cpu, self.gate_gpu):
            if gate is not None and gate.get("kind") not in GATE_KINDS:
                raise ValueError(f"metric {self.name}: gate kind must be one of {GATE_KINDS}, got {gate!r}")


def _m(*args, **kw) -> Metric:
    return Metric(*args, **kw)


SCHEMA: tuple[Metric, ...] = (
    _m("params", "count", "detector", "parameters of the model", fake=True, gate_cpu=EXACT, gate_gpu=EXACT),
    _m("params_trainable", "count", "detector", "parameters with requires_grad", fake=True,
       gate_cpu=EXACT, gate_gpu=EXACT),
    # CUDA caching allocator, around the memory step
    _m("mem_peak_alloc_mib", "MiB", "CudaPeakMemory", "torch.cuda.max_memory_allocated of the memory step",
       label="peak CUDA allocated", memory_table=True, plot_rank=0,
       gate_gpu={"kind": "noisy", "rel": 0.01, "abs": 2.0, "spread_k": 2.0}),
    _m("mem_peak_reserved_mib", "MiB", "CudaPeakMemory", "torch.cuda.max_memory_reserved of the memory step",
       label="peak CUDA reserved", memory_table=True, plot_rank=3,
       gate_gpu={"kind": "noisy", "rel": 0.10, "abs": 64.0, "spread_k": 3.0}),
    _m("mem_start_alloc_mib", "MiB", "CudaPeakMemory",
       "torch.cuda.memory_allocated when the memory step began (peak - start: the step's own peak)"),
    # NVML, sampled every 10 ms from the first warm-up step to the end of the memory step
    _m("nvml_process_used_peak_mib", "MiB", "NvmlSampler", "peak GPU memory NVML lists for this process",
       label="peak NVML process", memory_table=True, plot_rank=2,
       gate_gpu={"kind": "noisy", "rel": 0.10, "abs": 128.0, "spread_k": 3.0}),
    _m("nvml_device_used_peak_mib", "MiB", "NvmlSampler", "peak used memory of the whole device (NVML)",
       label="peak NVML device", memory_table=True, plot_rank=4,
       gate_gpu={"kind": "noisy", "rel": 0.15, "abs": 256.0, "spread_k": 3.0}),
    # CPU live-tensor tracker, around the memory step
    _m("cpu_tracked_peak_bytes", "bytes", "CpuPeakMemory", "peak of live tensor storage bytes (CPU)",
       gate_cpu=EXACT),
    _m("cpu_tracked_peak_mib", "MiB", "CpuPeakMemory", "cpu_tracked_peak_bytes / 2^20",
       label="peak CPU tracked tensors", memory_table=True, plot_rank=1),
    _m("cpu_tracked_start_bytes", "bytes", "CpuPeakMemory", "live tensor bytes when the memory step began",
       gate_cpu=EXACT),
    _m("cpu_tracked_late_bytes", "bytes", "CpuPeakMemory",
       "storages no Python object held at the start, counted in from the start when first written "
       "(DDP's gradient buckets); part of cpu_tracked_start_bytes"),
    _m("rss_peak_mib", "MiB", "rss_peak_mib", "peak resident set size of the case process (ru_maxrss)",
       label="peak RSS", plot_rank=5),
    # the FakeTensorMode estimate of one training step (fake = true cases)
    _m("fake_tracked_peak_bytes", "bytes", "estimate_train_step",
       "estimated peak of live tensor bytes of the second training step", real=False, fake=True, modes=TRAIN,
       gate_cpu=EXACT, gate_gpu=EXACT),
    _m("fake_tracked_peak_mib", "MiB", "estimate_train_step", "fake_tracked_peak_bytes / 2^20",
       real=False, fake=True, modes=TRAIN, label="peak tensors, FakeTensorMode estimate", memory_table=True,
       plot_rank=6),
    _m("fake_tracked_start_bytes", "bytes", "estimate_train_step",
       "estimated live tensor bytes before that step", real=False, fake=True, modes=TRAIN, gate_cpu=EXACT),
    # the CUDA-target estimate's predictions (fake = true, target = "cuda"; predict/fake_step.py
    # predicted_gpu_fields): estimates, labelled so in the report
    _m("predicted_tensor_peak_mib", "MiB", "predicted_gpu_fields",
       "ESTIMATE: live tensor peak of the step under CUDA's kernel choices", real=False, fake=True, modes=TRAIN),
    _m("predicted_alloc_peak_mib", "MiB", "predicted_gpu_fields",
       "ESTIMATE: max_memory_allocated (caching-allocator model)", real=False, fake=True, modes=TRAIN),
    _m("predicted_reserved_peak_mib", "MiB", "predicted_gpu_fields",
       "ESTIMATE: max_memory_reserved (caching-allocator model)", real=False, fake=True, modes=TRAIN),
    _m("predicted_device_used_mib", "MiB", "predicted_gpu_fields",
       "ESTIMATE: NVML used (reserved + cuBLAS workspaces + CUDA context of the case's gpu)", real=False,
       fake=True, modes=TRAIN),
    _m("predicted_fits", "flag", "predicted_gpu_fields", "ESTIMATE: device memory within the gpu's usable memory",
       real=False, fake=True, modes=TRAIN),
    _m("predicted_gpu", "text", "predicted_gpu_fields", "the GPU the device memory was predicted for",
       real=False, fake=True, modes=TRAIN),
    _m("predicted_breakdown_mib", "MiB", "predicted_gpu_fields",
       "ESTIMATE: the peak by category (instrument/breakdown.py)", real=False, fake=True, modes=TRAIN),
    _m("predicted_sdpa_kernels", "names", "predicted_gpu_fields",
       "SDPA calls per CUDA kernel the estimate modelled (flash, efficient, cudnn, math)", real=False, fake=True,
       modes=TRAIN),
    # step time (timed iterations after the warm-up)
    _m("step_ms_p50", "ms", "time_steps", "median step time", label="step time median",
       gate_gpu={"kind": "noisy", "rel": 0.25, "abs": 1.0, "spread_k": 3.0}, spread_from="step_ms_iqr"),
    _m("step_ms_p10", "ms", "time_steps", "10th percentile step time"),
    _m("step_ms_p25", "ms", "time_steps", "25th percentile step time"),
    _m("step_ms_p75", "ms", "time_steps", "75th percentile step time"),
    _m("step_ms_p90", "ms", "time_steps", "90th percentile step time"),
    _m("step_ms_mean", "ms", "time_steps", "mean step time"),
    _m("step_ms_iqr", "ms", "time_steps", "p75 - p25 step time"),
    _m("step_count", "count", "time_steps", "timed steps"),
    _m("first_step_ms", "ms", "time_steps", "the first warm-up step, timed on its own"),
    _m("images_per_s", "images/s", "time_steps", "batch size / median step time", label="throughput"),
    _m("timing_clock", "text", "StepTimer", "cuda_events or perf_counter"),
    # FLOPs (FlopCounterMode; 2 FLOPs per multiply-add)
    _m("gflops_fwd", "GFLOPs", "count_flops", "one forward", fake=True, label="forward",
       gate_cpu=EXACT, gate_gpu=EXACT),
    _m("gflops_fwd_bwd", "GFLOPs", "count_flops", "forward + loss + backward", fake=True, modes=TRAIN,
       label="forward + backward", gate_cpu=EXACT, gate_gpu=EXACT),
    _m("gmacs_fwd", "GMACs", "count_flops", "gflops_fwd / 2 (papers' convention)", fake=True),
    _m("gmacs_fwd_bwd", "GMACs", "count_flops", "gflops_fwd_bwd / 2", modes=TRAIN),
    _m("flops_uncounted_ops", "names", "count_flops", "contraction-like ops without a FLOP formula"),
    # what the step stored and ran
    _m("saved_for_backward_bytes", "bytes", "SavedTensorCounter",
       "distinct storages autograd saved in the forward and loss, parameters excluded", fake=True, modes=TRAIN,
       gate_cpu=EXACT, gate_gpu=EXACT),
    _m("attention_paths", "names", "OpRecorder", "attention kernels the step ran (math, sdpa_flash_cpu, ...)",
       fake=True, gate_cpu=SET, gate_gpu=SET),
    _m("msda_impl", "text", "msda_impl_metric",
       "deformable attention that ran: cuda_ext, pytorch_op, pytorch_reference or fake (+-joined)", fake=True),
    # ENACT statistics of the memory step, one entry per ENACT encoder layer
    _m("enact_cluster_size", "count", "enact_stats", "cluster size L per ENACT layer", fake=True),
    _m("enact_key_len_before", "tokens", "enact_stats", "keys per layer before ENACT (dense encoders)", fake=True),
    _m("enact_key_len_after", "tokens", "enact_stats", "keys per layer after ENACT (dense encoders)", fake=True),
    _m("enact_query_len_before", "tokens", "enact_stats", "query tokens per layer before clustering (deformable)",
       fake=True),
    _m("enact_query_len_after", "tokens", "enact_stats", "query tokens per layer after clustering (deformable)",
       fake=True),
    # DistributedDataParallel ranks under torchrun (run/ddp_worker.py): one record for all ranks,
    # whose memory fields above are the largest rank's, step times the slowest rank's, and
    # images_per_s global (world batch / the slowest rank's median step)
    _m("world_size", "count", "combine_ranks", "DDP ranks (all nodes)", torchrun_only=True),
    _m("world_batch_size", "count", "combine_ranks", "world_size x batch_size (the batch per rank)",
       torchrun_only=True),
    _m("peak_rank", "count", "combine_ranks", "the rank whose memory peak the record's memory fields are",
       torchrun_only=True),
    _m("slowest_rank", "count", "combine_ranks", "the rank whose step times the record's step fields are",
       torchrun_only=True),
    *(_m(f"{name}_per_rank", unit, "combine_ranks", f"{name} of each rank (list, index = rank)", torchrun_only=True)
      for name, unit in (("mem_peak_alloc_mib", "MiB"), ("mem_peak_reserved_mib", "MiB"),
                         ("nvml_device_used_peak_mib", "MiB"), ("nvml_process_used_peak_mib", "MiB"),
                         ("cpu_tracked_peak_bytes", "bytes"), ("cpu_tracked_peak_mib", "MiB"),
                         ("cpu_tracked_start_bytes", "bytes"), ("rss_peak_mib", "MiB"), ("step_ms_p50", "ms"),
                         ("first_step_ms", "ms"), ("images_per_s", "images/s"))),
    _m("scaling_efficiency", "count", "add_scaling_efficiency",
       "images_per_s / (world_size x images_per_s of the same case at nproc = 1 earlier in the run)",
       torchrun_only=True),
    _m("scaling_baseline_case_id", "text", "add_scaling_efficiency", "the nproc = 1 case of scaling_efficiency",
       torchrun_only=True),
    _m("ddp_bucket_bytes", "bytes", "reducer_bucket_bytes",
       "DDP's gradient buckets: the reducer's layout (torchrun), or the estimate's (fake, ddp = true)",
       fake=True, modes=TRAIN, torchrun_only=True),
    _m("ddp_bucket_count", "count", "reducer_bucket_bytes", "buckets of the reducer after its rebuild",
       modes=TRAIN, torchrun_only=True),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in SCHEMA}
if len(BY_NAME) != len(SCHEMA):
    raise ValueError("a metric name appears twice in SCHEMA")


def metric(name: str) -> Metric:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(BY_NAME)}") from None


def names(*, real: bool | None = None, fake: bool | None = None, tracker: str | None = None,
          torchrun: bool = False) -> tuple[str, ...]:
    """Metric names in schema order, filtered by who writes them; torchrun=True adds the
    torchrun-only ones."""
    return tuple(m.name for m in SCHEMA
                 if (real is None or m.real == real) and (fake is None or m.fake == fake)
                 and (tracker is None or m.tracker == tracker) and (torchrun or not m.torchrun_only))


def record_metric_names(torchrun: bool = False) -> tuple[str, ...]:
    """The metrics every real-tensor record starts with (each null until measured); those of a
    torchrun case's record with torchrun=True."""
    return names(real=True, torchrun=torchrun)


def fake_not_measured() -> tuple[str, ...]:
    """Fields of a real record that a `fake = true` case cannot fill (null with the reason)."""
    return names(real=True, fake=False)


def tolerances(device_kind: str) -> dict[str, dict]:
    """The gate's default rules for a baseline on `device_kind` ("cpu" or "cuda"), copies."""
    attr = "gate_gpu" if device_kind == "cuda" else "gate_cpu"
    return {m.name: dict(getattr(m, attr)) for m in SCHEMA if getattr(m, attr) is not None}


def spread_from() -> dict[str, str]:
    return {m.name: m.spread_from for m in SCHEMA if m.spread_from}


def markdown_table() -> str:
    """The metric table of docs/CONTRACTS.md."""
    rows = ["| metric | unit | written by | cases | modes | meaning |", "|---|---|---|---|---|---|"]
    for m in SCHEMA:
        cases = "real, fake" if m.real and m.fake else ("real" if m.real else "fake")
        if m.torchrun_only:
            cases = "torchrun" + (", fake (ddp)" if m.fake else "")
        rows.append(f"| `{m.name}` | {m.unit} | {m.tracker} | {cases} | {', '.join(m.modes)} | {m.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
