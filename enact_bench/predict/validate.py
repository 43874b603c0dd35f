"""`enact-bench plan ... --validate`: the real training step on a CUDA GPU at the planned batch
sizes, beside the plan's predictions.

Per variant and planned batch size: build the detector on the GPU (random weights, the same
variant as the plan), one warm-up step (gradients and AdamW state appear), then the measured
step under the harness's memory protocol (docs/harness.md: gc, synchronize, empty_cache, reset_peak_memory_stats; then
max_memory_allocated / max_memory_reserved; an NVML sampler every 10 ms for the device's and
this process's used memory). The step is the plan's: the same synthetic batch (make_batch), the
same clipping and AdamW (torch's CUDA default: foreach), the original's Hungarian matcher.
A batch that runs out of memory is a result (status "oom"), not a crash.
"""
from __future__ import annotations

import gc
import time

from enact_bench.errors import UserInputError
from enact_bench.metrics import MIB



def require_cuda() -> None:
    """One-line error (exit 2) when there is no CUDA device to validate on."""
    try:
        import torch
        ok = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        ok = False
    if not ok:
        raise UserInputError("--validate runs the real training step and needs a CUDA GPU; "
                             "torch.cuda.is_available() is False here (drop --validate for the estimate alone)")


def device_name() -> str:
    import torch
    return torch.cuda.get_device_name(0)


def measure_real_step(detector: str, batch_size: int, image_size: tuple[int, int], *, enact_cluster_size=None,
                      overrides=None, dtype: str = "float32", device: str = "cuda") -> dict:
    """max_memory_allocated / reserved and NVML peaks of one steady-state training step, MiB."""
    import contextlib

    import torch

    from enact_bench.detectors import build_variant
    from enact_bench.data.batch import make_batch
    from enact_bench.train.optim import make_optimizer
    from enact_bench.train.step import train_step
    from enact_bench.measure.memory import CudaPeakMemory, NvmlSampler

    dev = torch.device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = criterion = optimizer = batch = scaler = None
    try:
        model = build_variant(detector, cluster_size=enact_cluster_size, overrides=overrides).to(dev)
        criterion = model.build_criterion().to(dev)
        optimizer = make_optimizer(model)
        clip = getattr(model, "grad_clip_max_norm", None) or 0.0
        batch = make_batch(batch_size, image_size, num_classes=getattr(model, "num_classes", 91)).to(dev)
        amp = ((lambda: torch.autocast("cuda", dtype=getattr(torch, dtype))) if dtype != "float32"
               else contextlib.nullcontext)
        # float16 trains with a loss scaler, as the plan's CUDA target models (predict/amp_scaler.py)
        scaler = torch.amp.GradScaler("cuda") if dtype == "float16" else None
        train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask, clip_max_norm=clip,
                   autocast=amp, scaler=scaler)  # warm-up
        sampler = NvmlSampler(dev).start()
        try:
            with CudaPeakMemory(dev) as mem:
                train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                           clip_max_norm=clip, autocast=amp, scaler=scaler)
        finally:
            sampler.stop()
        f = mem.fields
        out = {"status": "ok", "max_memory_allocated_mib": f["mem_peak_alloc_mib"],
               "max_memory_reserved_mib": f["mem_peak_reserved_mib"], "start_allocated_mib": f["mem_start_alloc_mib"],
               **sampler.fields, "null_reasons": sampler.reasons()}
    except torch.OutOfMemoryError as e:
        out = {"status": "oom", "error": str(e).splitlines()[0][:300]}
    finally:
        del model, criterion, optimizer, batch, scaler
        gc.collect()
        torch.cuda.empty_cache()
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _ratio(measured, predicted):
    if measured is None or not predicted:
        return None
    return round(measured / predicted, 4)


def compare(row: dict, measured: dict) -> dict:
    """Predicted (a plan row, MiB) against measured; ratio = measured / predicted."""
    return {"batch_size": row["batch_size"],
            "predicted": {k: row[k] for k in ("tensor_peak_mib", "alloc_peak_mib", "reserved_peak_mib", "device_used_mib")},
            "predicted_fits": row["fits"],
            "measured": measured,
            "ratios": {"alloc": _ratio(measured.get("max_memory_allocated_mib"), row["alloc_peak_mib"]),
                       "alloc_vs_tensor_peak": _ratio(measured.get("max_memory_allocated_mib"), row["tensor_peak_mib"]),
                       "reserved": _ratio(measured.get("max_memory_reserved_mib"), row["reserved_peak_mib"]),
                       "nvml_process": _ratio(measured.get("nvml_process_used_peak_mib"), row["device_used_mib"]),
                       "nvml_device": _ratio(measured.get("nvml_device_used_peak_mib"), row["device_used_mib"])}}


def validate_plan(plan) -> list[dict]:
    """Run every planned (variant, batch size) for real; returns one comparison per row."""
    require_cuda()
    req = plan.request
    out = []
    for v in plan.variants:
        if not v.applicable or v.error:
            continue
        for row in (r.as_dict() for r in v.rows):
            measured = measure_real_step(req.detector, row["batch_size"], req.hw(row["batch_size"]),
                                         enact_cluster_size=v.enact_cluster_size, overrides=v.overrides, dtype=req.dtype)
            out.append({"variant": v.variant, **compare(row, measured)})
    return out


def validation_table(plan_dict: dict):
    from rich.table import Table

    t = Table(title=f"{plan_dict['detector']} on this GPU: predicted (estimate) vs measured, MiB "
                    "(ratio = measured / predicted)", title_justify="left")
    for c in ("variant", "batch", "alloc pred", "alloc meas", "ratio", "reserved pred", "reserved meas", "ratio",
              "device pred", "NVML process", "ratio", "status"):
        t.add_column(c, justify="left" if c in ("variant", "status") else "right")
    for v in plan_dict.get("validation", []):
        p, m, r = v["predicted"], v["measured"], v["ratios"]

        def f(x):
            return "-" if x is None else f"{x:,.0f}"

        def g(x):
            return "-" if x is None else f"{x:.3f}"
        t.add_row(v["variant"], str(v["batch_size"]), f(p["alloc_peak_mib"]), f(m.get("max_memory_allocated_mib")),
                  g(r["alloc"]), f(p["reserved_peak_mib"]), f(m.get("max_memory_reserved_mib")), g(r["reserved"]),
                  f(p["device_used_mib"]), f(m.get("nvml_process_used_peak_mib")), g(r["nvml_process"]), m["status"])
    return t
