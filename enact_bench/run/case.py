"""One case in this process: the trackers around the case's steps -> a Record.

Protocol (docs/harness.md): build the detector (optionally load a checkpoint); warm-up steps
(the first timed on its own), timed steps; then one more step on batch 0 with the memory
trackers around it (and the saved-for-backward bytes in training); the NVML sampler runs from
the first warm-up step to the end of that step; then ENACT statistics, FLOPs (one forward, one
forward+backward) and evaluation hooks. A `fake = true` case instead estimates one training
step under FakeTensorMode (predict/fake_step.py). A torch.OutOfMemoryError gives status "oom",
anything else "error"; a CUDA case on a machine without CUDA "skipped".
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import traceback

from enact_bench import metrics as metrics_schema
from enact_bench.records import Record, utc_now
from enact_bench.run import steps as case_steps_mod
from enact_bench.suite.case import Case

METRIC_KEYS = metrics_schema.record_metric_names()  # every real record starts with these, null
FAKE_NOT_MEASURED = metrics_schema.fake_not_measured()
# record metric -> key of model.enact_stats(): dense encoders shorten keys (key_len_*),
# deformable ones cluster queries (query_len_*)
ENACT_STATS = {"enact_cluster_size": "cluster_size", "enact_key_len_before": "key_len_before",
               "enact_key_len_after": "key_len_after", "enact_query_len_before": "query_len_before",
               "enact_query_len_after": "query_len_after"}


def is_oom(e: BaseException) -> bool:
    import torch
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def empty_metrics() -> dict:
    return {k: None for k in METRIC_KEYS}


def failed_record(case: Case, *, run_id: str, suite: str, why: str, started_at: str, duration_s: float) -> Record:
    """The record of a case whose process ended without writing one (killed, timed out)."""
    metrics = empty_metrics()
    return Record(run_id=run_id, suite=suite, case_id=case.case_id, status="error",
                  case={**case.to_dict(), "attention": None}, metrics=metrics,
                  null_reasons={k: "case process failed" for k in metrics}, error=why,
                  started_at=started_at, duration_s=round(duration_s, 3))


def _model_fields(model, record_case: dict) -> None:
    record_case["attention"] = getattr(model, "attention", None)
    record_case["family"] = getattr(model, "family", None)
    cfg = getattr(model, "enact_config", None)
    record_case["enact_config"] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None


def _enact_metrics(model, metrics: dict, reasons: dict, convert=lambda v: v) -> None:
    stats = model.enact_stats() if hasattr(model, "enact_stats") else []
    if not stats:
        why = "ENACT is off" if getattr(model, "enact_config", None) is None else "no ENACT statistics recorded"
        for k in ENACT_STATS:
            reasons[k] = why
        return
    for mk, sk in ENACT_STATS.items():
        values = [convert(s.get(sk)) for s in stats]  # one entry per ENACT encoder layer
        if all(v is None for v in values):
            reasons[mk] = f"this encoder's ENACT statistics have no {sk!r}"
        else:
            metrics[mk] = values


def measure_case(case: Case, metrics: dict, reasons: dict, record_case: dict, *, wrap=None,
                 source=None) -> None:
    """Real tensors: timing, memory trackers, FLOPs, ENACT statistics, evaluation hooks.

    Under torchrun (run/ddp_worker.py) each rank calls it with `wrap` (model -> its
    DistributedDataParallel wrapper, which the measured step calls) and its own `source`. Every
    rank runs every pass, FLOPs and evaluation hooks included: the criterion all-reduces its box
    count across ranks (as the originals'), so a pass on one rank alone would wait forever."""
    import torch

    from enact_bench.data.sources import make_data_source
    from enact_bench.evaluate.registry import get_evaluation
    from enact_bench.instrument.flops import count_flops
    from enact_bench.measure.memory import CpuPeakMemory, CudaPeakMemory, NvmlSampler, rss_peak_mib
    from enact_bench.instrument.step_probe import OpRecorder, SavedTensorCounter, attention_paths
    from enact_bench.measure.timing import StepTimer, summarize_ms, time_steps
    from enact_bench.detectors.common.ms_deform_attn_op import msda_impl_metric, reset_msda_impls

    device = torch.device(case.device)
    torch.manual_seed(case.seed)
    model = case_steps_mod.build_model(case).to(device)
    if case.checkpoint:
        record_case["checkpoint_sha256"] = case_steps_mod.file_sha256(case.checkpoint)
    _model_fields(model, record_case)
    metrics["params"] = sum(p.numel() for p in model.parameters())
    metrics["params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    source = source if source is not None else make_data_source(case)
    record_case.update(getattr(source, "record_fields", {}))  # e.g. the COCO root and annotation file
    holder: dict = {}

    def load(i: int) -> None:
        holder["batch"] = None
        holder["batch"] = source.batch(i).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps = case_steps_mod.case_steps(case, model, device, holder, forward=wrap(model) if wrap else None)

    sampler = NvmlSampler(device).start()
    try:
        first, times = time_steps(steps.step, warmup=case.warmup, iters=case.iters, device=device, before_each=load)
        metrics["first_step_ms"] = first
        metrics.update(summarize_ms(times, case.batch_size))
        metrics["timing_clock"] = StepTimer(device).clock

        # one steady-state step on batch 0 with the memory trackers around it
        load(0)
        saved = (SavedTensorCounter(exclude=list(model.parameters()) + list(model.buffers()))
                 if case.mode == "train" else None)
        hooks = saved.counting() if saved else contextlib.nullcontext()
        cuda_mem = CudaPeakMemory(device)
        cpu_mem = CpuPeakMemory() if device.type == "cpu" else None
        ops = OpRecorder()
        reset_msda_impls()
        with cuda_mem, (cpu_mem or contextlib.nullcontext()), hooks, ops:
            steps.step()
        metrics["attention_paths"] = attention_paths(ops.ops)
        msda_impl_metric(metrics, reasons)
    finally:
        sampler.stop()
    metrics.update(cuda_mem.fields)
    reasons.update(cuda_mem.null_reasons)
    metrics.update(sampler.fields)
    reasons.update(sampler.reasons())
    if cpu_mem is not None:
        metrics.update(cpu_mem.fields)
    else:
        for k in metrics_schema.names(tracker="CpuPeakMemory"):
            reasons[k] = f"device is {device.type}: see mem_peak_alloc_mib"
    metrics["rss_peak_mib"] = rss_peak_mib()
    if saved is not None:
        metrics["saved_for_backward_bytes"] = saved.saved_bytes
    else:
        reasons["saved_for_backward_bytes"] = "infer mode: nothing is saved for backward"
    _enact_metrics(model, metrics, reasons)

    if case.flops:
        fwd = count_flops(steps.forward_only)
        metrics["gflops_fwd"], metrics["gmacs_fwd"] = fwd.gflops, fwd.gmacs
        uncounted = set(fwd.uncounted_ops)
        if steps.forward_backward is not None:
            fb = count_flops(steps.forward_backward)
            metrics["gflops_fwd_bwd"], metrics["gmacs_fwd_bwd"] = fb.gflops, fb.gmacs
            uncounted |= set(fb.uncounted_ops)
        else:
            reasons["gflops_fwd_bwd"] = reasons["gmacs_fwd_bwd"] = "infer mode: no backward"
        metrics["flops_uncounted_ops"] = sorted(uncounted)
    else:
        for k in metrics_schema.names(tracker="count_flops"):
            reasons[k] = "flops = false in the suite"

    for name in case.evaluate:
        spec = get_evaluation(name)
        if case.mode not in spec.modes:
            reasons[name] = f"evaluation {name!r} runs in modes {spec.modes}, not {case.mode}"
            continue
        metrics[name] = spec.fn(model, case, source, device)


def measure_case_fake(case: Case, metrics: dict, reasons: dict, record_case: dict) -> None:
    """A `fake = true` case: fills fake_tracked_peak_bytes / _mib / fake_tracked_start_bytes (the
    estimate: every live tensor at the peak of the second training step),
    saved_for_backward_bytes, FLOPs, parameter counts and attention_paths; timing and
    real-memory fields are null with the reason."""
    import torch

    from enact_bench.detectors.common.ms_deform_attn_op import msda_impl_metric, reset_msda_impls
    from enact_bench.predict.fake_step import estimate_train_step

    if case.mode != "train":
        raise ValueError(f"fake = true estimates a training step: mode must be 'train', got {case.mode!r}")
    if case.image_size is None:
        raise ValueError("fake = true needs a fixed image_size (\"HxW\")")
    if case.enact and (case.enact_config or {}).get("cluster_size") is None:
        raise ValueError("fake = true with ENACT needs a fixed cluster size: enact_config = {cluster_size = k} "
                         "(data-dependent shapes cannot be faked)")
    torch.manual_seed(case.seed)
    model = case_steps_mod.build_model(case)
    _model_fields(model, record_case)
    clip = case_steps_mod.clip_norm_of(case, model, default=0.1)
    record_case["target"] = case.target
    reset_msda_impls()
    if case.target == "cpu":  # the CPU's kernels: a real CPU step's figures, byte for byte (the CI gate's baseline)
        m = estimate_train_step(model, model.build_criterion(), case.batch_size, case.image_size,
                                num_classes=case.num_classes, clip_max_norm=clip or 0.0, ddp=case.ddp)
        for k in metrics_schema.names(tracker="predicted_gpu_fields"):
            reasons[k] = "target = cpu: the estimate follows the CPU's kernels (set target = \"cuda\" for a GPU)"
    else:  # what a CUDA GPU would keep (predict/cuda_policy.py), and its allocator and device memory
        from enact_bench.predict.cuda_policy import CudaArch
        from enact_bench.predict.fake_step import predicted_gpu_fields
        from enact_bench.predict.gpus import get_gpu

        gpu = get_gpu(case.gpu) if case.gpu else None
        m = estimate_train_step(model, model.build_criterion(), case.batch_size, case.image_size,
                                num_classes=case.num_classes, clip_max_norm=clip or 0.0, target=case.target,
                                warmup="prime", count_flops=case.flops, breakdown=True, ddp=case.ddp,
                                arch=CudaArch(*gpu.compute_capability) if gpu else CudaArch())
        metrics.update(predicted_gpu_fields(m, gpu, reasons))
    metrics.update(m.metrics())
    msda_impl_metric(metrics, reasons)
    if not case.flops:
        for k in ("gflops_fwd", "gflops_fwd_bwd", "gmacs_fwd"):
            metrics[k] = None
            reasons[k] = "flops = false in the suite"
    _enact_metrics(model, metrics, reasons, convert=_plain)
    for k in FAKE_NOT_MEASURED:
        reasons.setdefault(k, "fake = true: shapes only (FakeTensorMode), nothing real was run or timed")


def _plain(v):
    """A statistic as plain JSON (a fake tensor has no value: None)."""
    import torch
    if isinstance(v, torch.Tensor):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return int(v) if v is not None else None


def run_case(case: Case, *, run_id: str = "inline", suite: str = "") -> Record:
    """Measure one case in this process and return its record (never raises for a failed case)."""
    import torch

    from enact_bench.records import capture_env

    started, t0 = utc_now(), time.perf_counter()
    metrics = empty_metrics()
    reasons: dict[str, str] = {}
    record_case = case.to_dict()
    record_case.setdefault("attention", None)
    env: dict = {}
    status, error = "ok", None
    threads_before = torch.get_num_threads()
    try:
        if case.cpu_threads:
            torch.set_num_threads(case.cpu_threads)
        if torch.device(case.device).type == "cuda" and not torch.cuda.is_available():
            status, error = "skipped", f"device {case.device!r} requested but no CUDA device is available"
        else:
            torch.backends.cuda.matmul.allow_tf32 = case.tf32
            torch.backends.cudnn.allow_tf32 = case.tf32
            torch.backends.cudnn.benchmark = case.cudnn_benchmark
            env = capture_env(case.device)
            (measure_case_fake if case.fake else measure_case)(case, metrics, reasons, record_case)
    except Exception as e:  # noqa: BLE001 -- a failed case is a result, not a crash
        status = "oom" if is_oom(e) else "error"
        error = f"{type(e).__name__}: {e}"
        if status == "error":
            error += "\n" + "".join(traceback.format_exception(e)[-6:])
    finally:
        torch.set_num_threads(threads_before)
        _release_memory()
    for k, v in metrics.items():
        if v is None and k not in reasons:
            reasons[k] = {"ok": "not measured", "skipped": "case skipped"}.get(status, f"case ended with status {status}")
    return Record(run_id=run_id, suite=suite, case_id=case.case_id, status=status, case=record_case,
                  metrics=metrics, null_reasons=reasons, env=env, error=error, started_at=started,
                  duration_s=round(time.perf_counter() - t0, 3))


def _release_memory() -> None:
    import gc
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
