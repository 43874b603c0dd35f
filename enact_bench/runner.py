"""Run cases: one in-process (`run_case`), one in a fresh subprocess (`run_case_subprocess`,
the default: a clean allocator and clean peak statistics per case), or a whole suite
(`run_suite`), appending one record per case to reports/<run_id>/records.jsonl.

Protocol per case (docs/harness.md): build the detector (optionally load a checkpoint); warm-up
steps (the first timed on its own), timed steps; then one more step on batch 0 with the memory
trackers around it (and the saved-for-backward bytes in training); the NVML sampler runs from
the first warm-up step to the end of that step; then ENACT statistics, FLOPs (one forward, one
forward+backward) and evaluation hooks. Train step = forward + loss + backward + gradient
clipping + AdamW step (the detector's parameter groups and learning rates). Infer step = no-grad
forward + post-processing. A torch.OutOfMemoryError gives status "oom", anything else "error".

    python -m enact_bench.runner --case-json CASE.json --record-out RECORD.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from enact_bench.records import Record, append_record, read_records, utc_now
from enact_bench.suites import Case, Suite, load_suite_text

MIB = 2**20
METRIC_KEYS = (
    "params", "params_trainable",
    "mem_peak_alloc_mib", "mem_peak_reserved_mib", "mem_start_alloc_mib", "nvml_device_used_peak_mib", "nvml_process_used_peak_mib",
    "cpu_tracked_peak_bytes", "cpu_tracked_peak_mib", "cpu_tracked_start_bytes", "rss_peak_mib",
    "step_ms_p50", "step_ms_p10", "step_ms_p25", "step_ms_p75", "step_ms_p90", "step_ms_mean", "step_ms_iqr",
    "step_count",
    "first_step_ms", "images_per_s", "timing_clock",
    "gflops_fwd", "gflops_fwd_bwd", "gmacs_fwd", "gmacs_fwd_bwd", "flops_uncounted_ops",
    "saved_for_backward_bytes", "attention_paths",
    "enact_cluster_size", "enact_key_len_before", "enact_key_len_after",
    "enact_query_len_before", "enact_query_len_after",
)


# ---------------------------------------------------------------------------------------
# one case, in this process
# ---------------------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    import torch
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def build_model(case: Case):
    from enact_bench.detectors import create_detector, load_checkpoint

    enact = case.enact
    if case.enact and case.enact_config:
        from enact import EnactConfig
        enact = EnactConfig(**case.enact_config)
    model = create_detector(case.detector, enact=enact, num_classes=case.num_classes, **case.overrides)
    if case.checkpoint:
        load_checkpoint(model, case.checkpoint, trust=case.trust_checkpoint)
    return model


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _autocast(case: Case, device):
    import torch
    if case.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, case.dtype))


def _make_steps(case: Case, model, device, holder: dict):
    """Return (step, forward_only, forward_backward) closures over holder["batch"]."""
    import torch

    amp = lambda: _autocast(case, device)  # noqa: E731
    if case.mode == "train":
        model.train()
        criterion = model.build_criterion().to(device)
        weights = criterion.weight_dict
        opt = torch.optim.AdamW(model.param_groups(), **model.default_optimizer_kwargs)
        clip = case.clip_max_norm if case.clip_max_norm is not None else getattr(model, "grad_clip_max_norm", None)

        def loss_of_batch():
            b = holder["batch"]
            with amp():
                out = model(b.images, targets=b.targets)
                losses = criterion(out, b.targets)
                return sum(losses[k] * weights[k] for k in losses if k in weights)

        def step():
            loss = loss_of_batch()
            opt.zero_grad(set_to_none=True)  # after the forward, as the released trainers
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()

        def forward_only():
            b = holder["batch"]
            with amp():
                model(b.images, targets=b.targets)

        def forward_backward():
            loss_of_batch().backward()
            opt.zero_grad(set_to_none=True)

        return step, forward_only, forward_backward

    model.eval()

    def infer():
        b = holder["batch"]
        with torch.no_grad(), amp():
            out = model(b.images)
            model.postprocess(out, b.sizes)

    def forward_only():
        b = holder["batch"]
        with torch.no_grad(), amp():
            model(b.images)

    return infer, forward_only, None


def _enact_metrics(model, metrics: dict, reasons: dict) -> None:
    stats = model.enact_stats() if hasattr(model, "enact_stats") else []
    # dense encoders shorten keys (key_len_*); deformable ones cluster queries (query_len_*)
    keys = {"enact_cluster_size": "cluster_size", "enact_key_len_before": "key_len_before",
            "enact_key_len_after": "key_len_after", "enact_query_len_before": "query_len_before",
            "enact_query_len_after": "query_len_after"}
    if not stats:
        why = "ENACT is off" if getattr(model, "enact_config", None) is None else "no ENACT statistics recorded"
        for k in keys:
            reasons[k] = why
        return
    for mk, sk in keys.items():
        values = [s.get(sk) for s in stats]  # one entry per ENACT encoder layer
        if all(v is None for v in values):
            reasons[mk] = f"this encoder's ENACT statistics have no {sk!r}"
        else:
            metrics[mk] = values


def _measure(case: Case, metrics: dict, reasons: dict, record_case: dict) -> None:
    import torch

    from enact_bench.data.sources import make_data_source
    from enact_bench.measure.evaluation import get_evaluation
    from enact_bench.measure.flops import count_flops
    from enact_bench.measure.memory import CpuPeakMemory, CudaPeakMemory, NvmlSampler, rss_peak_mib
    from enact_bench.measure.step_probe import OpRecorder, SavedTensorCounter, attention_paths
    from enact_bench.measure.timing import StepTimer, summarize_ms, time_steps

    device = torch.device(case.device)
    torch.manual_seed(case.seed)
    model = build_model(case).to(device)
    if case.checkpoint:
        record_case["checkpoint_sha256"] = file_sha256(case.checkpoint)
    record_case["attention"] = getattr(model, "attention", None)
    record_case["family"] = getattr(model, "family", None)
    cfg = getattr(model, "enact_config", None)
    record_case["enact_config"] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None
    metrics["params"] = sum(p.numel() for p in model.parameters())
    metrics["params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    source = make_data_source(case)
    record_case.update(getattr(source, "record_fields", {}))  # e.g. the COCO root and annotation file
    holder: dict = {}

    def load(i: int) -> None:
        holder["batch"] = None
        holder["batch"] = source.batch(i).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step, forward_only, forward_backward = _make_steps(case, model, device, holder)

    sampler = NvmlSampler(device).start()
    try:
        first, times = time_steps(step, warmup=case.warmup, iters=case.iters, device=device, before_each=load)
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
        with cuda_mem, (cpu_mem or contextlib.nullcontext()), hooks, ops:
            step()
        metrics["attention_paths"] = attention_paths(ops.ops)
    finally:
        sampler.stop()
    metrics.update(cuda_mem.fields)
    reasons.update(cuda_mem.null_reasons)
    metrics.update(sampler.fields)
    reasons.update(sampler.reasons())
    if cpu_mem is not None:
        metrics.update(cpu_mem.fields)
    else:
        for k in ("cpu_tracked_peak_bytes", "cpu_tracked_peak_mib", "cpu_tracked_start_bytes"):
            reasons[k] = f"device is {device.type}: see mem_peak_alloc_mib"
    metrics["rss_peak_mib"] = rss_peak_mib()
    if saved is not None:
        metrics["saved_for_backward_bytes"] = saved.saved_bytes
    else:
        reasons["saved_for_backward_bytes"] = "infer mode: nothing is saved for backward"
    _enact_metrics(model, metrics, reasons)

    if case.flops:
        fwd = count_flops(forward_only)
        metrics["gflops_fwd"], metrics["gmacs_fwd"] = fwd.gflops, fwd.gmacs
        uncounted = set(fwd.uncounted_ops)
        if forward_backward is not None:
            fb = count_flops(forward_backward)
            metrics["gflops_fwd_bwd"], metrics["gmacs_fwd_bwd"] = fb.gflops, fb.gmacs
            uncounted |= set(fb.uncounted_ops)
        else:
            reasons["gflops_fwd_bwd"] = reasons["gmacs_fwd_bwd"] = "infer mode: no backward"
        metrics["flops_uncounted_ops"] = sorted(uncounted)
    else:
        for k in ("gflops_fwd", "gflops_fwd_bwd", "gmacs_fwd", "gmacs_fwd_bwd", "flops_uncounted_ops"):
            reasons[k] = "flops = false in the suite"

    for name in case.evaluate:
        spec = get_evaluation(name)
        if case.mode not in spec.modes:
            reasons[name] = f"evaluation {name!r} runs in modes {spec.modes}, not {case.mode}"
            continue
        metrics[name] = spec.fn(model, case, source, device)


def run_case(case: Case, *, run_id: str = "inline", suite: str = "") -> Record:
    """Measure one case in this process and return its record (never raises for a failed case)."""
    started, t0 = utc_now(), time.perf_counter()
    metrics = {k: None for k in METRIC_KEYS}
    reasons: dict[str, str] = {}
    record_case = case.to_dict()
    record_case.setdefault("attention", None)
    env: dict = {}
    status, error = "ok", None
    import torch
    threads_before = torch.get_num_threads()
    try:
        if case.cpu_threads:
            torch.set_num_threads(case.cpu_threads)

        from enact_bench.records import capture_env

        if torch.device(case.device).type == "cuda" and not torch.cuda.is_available():
            status, error = "skipped", f"device {case.device!r} requested but no CUDA device is available"
        else:
            torch.backends.cuda.matmul.allow_tf32 = case.tf32
            torch.backends.cudnn.allow_tf32 = case.tf32
            torch.backends.cudnn.benchmark = case.cudnn_benchmark
            env = capture_env(case.device)
            if case.fake:
                from enact_bench.measure.estimate import measure_case_fake
                measure_case_fake(case, metrics, reasons, record_case)
            else:
                _measure(case, metrics, reasons, record_case)
    except Exception as e:  # noqa: BLE001 -- a failed case is a result, not a crash
        status = "oom" if _is_oom(e) else "error"
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


# ---------------------------------------------------------------------------------------
# one case, in a fresh subprocess
# ---------------------------------------------------------------------------------------
def _child_env() -> dict:
    """The child must import this same enact_bench, installed or not."""
    import enact_bench
    root = str(Path(enact_bench.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _safe_name(case_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+," else "_" for c in case_id)


def run_case_subprocess(case: Case, run_dir: Path, *, run_id: str, suite: str,
                        timeout_s: float | None = None) -> Record:
    run_dir = Path(run_dir)
    work = run_dir / "cases"
    logs = run_dir / "logs"
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    name = _safe_name(case.case_id)
    case_file, record_file, log_file = work / f"{name}.json", work / f"{name}.record.json", logs / f"{name}.log"
    record_file.unlink(missing_ok=True)
    case_file.write_text(json.dumps({"case": case.to_dict(), "run_id": run_id, "suite": suite}, indent=1))
    started, t0 = utc_now(), time.perf_counter()
    cmd = [sys.executable, "-m", "enact_bench.runner", "--case-json", str(case_file),
           "--record-out", str(record_file)]
    with open(log_file, "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), timeout=timeout_s)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = None
    if record_file.exists():
        return Record.from_dict(json.loads(record_file.read_text()))
    tail = log_file.read_text(errors="replace").strip().splitlines()[-15:]
    if rc is None:
        why = f"timed out after {timeout_s} s"
    elif rc < 0:
        why = f"case process killed by signal {-rc}" + (" (SIGKILL: host out of memory?)" if rc == -9 else "")
    else:
        why = f"case process exited with code {rc}"
    metrics = {k: None for k in METRIC_KEYS}
    return Record(run_id=run_id, suite=suite, case_id=case.case_id, status="error",
                  case={**case.to_dict(), "attention": None},
                  metrics=metrics, null_reasons={k: "case process failed" for k in metrics},
                  error=why + ("\n" + "\n".join(tail) if tail else ""), started_at=started,
                  duration_s=round(time.perf_counter() - t0, 3))


# ---------------------------------------------------------------------------------------
# a suite
# ---------------------------------------------------------------------------------------
@dataclass
class RunResult:
    run_dir: Path
    run_id: str
    records: list[Record] = field(default_factory=list)
    skipped_ok: list[str] = field(default_factory=list)  # case_ids already ok (resume)
    interrupted: bool = False


def _needs_missing_cuda(case: Case) -> bool:
    import torch
    return case.device.startswith("cuda") and not torch.cuda.is_available()


def new_run_id(suite_name: str) -> str:
    return f"{suite_name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run(suite: Suite, out_dir: str | Path, overrides: list | None = None,
                run_id: str | None = None, case_edits: dict | None = None) -> tuple[Path, str]:
    """Create reports/<run_id>/ with suite.toml (as run) and run.json (how to resume)."""
    run_id = run_id or new_run_id(suite.name)
    run_dir = Path(out_dir) / run_id
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(out_dir) / f"{run_id}-{n}"
    run_id = run_dir.name
    run_dir.mkdir(parents=True)
    (run_dir / "suite.toml").write_text(suite.text)
    meta = {"run_id": run_id, "suite": suite.name, "suite_path": str(suite.path) if suite.path else None,
            "overrides": overrides or [], "case_edits": case_edits or {}, "created_at": utc_now(),
            "case_ids": [c.case_id for c in suite.cases]}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=1))
    return run_dir, run_id


def load_run_suite(run_dir: str | Path) -> tuple[Suite, dict]:
    """The suite of an existing run (its suite.toml copy and its overrides), for --resume."""
    from enact_bench.errors import UserInputError

    run_dir = Path(run_dir)
    meta_file, suite_file = run_dir / "run.json", run_dir / "suite.toml"
    if not meta_file.is_file() or not suite_file.is_file():
        raise UserInputError(f"{run_dir} is not a run folder (expected run.json and suite.toml in it)")
    meta = json.loads(meta_file.read_text())
    base = Path(meta["suite_path"]).parent if meta.get("suite_path") else run_dir
    overrides = [(k, v) for k, v in meta.get("overrides", [])]
    suite = load_suite_text(suite_file.read_text(), path=suite_file, overrides=overrides, base_dir=base)
    from enact_bench.case_edits import CaseEdits
    suite = CaseEdits.from_json(meta.get("case_edits")).apply(suite)
    return suite, meta


def run_suite(suite: Suite, run_dir: Path, run_id: str, *, inline: bool = False,
              on_start: Callable[[int, int, Case], None] | None = None,
              on_end: Callable[[int, int, Record], None] | None = None,
              timeout_s: float | None = None) -> RunResult:
    """Run every case not yet ok in run_dir/records.jsonl; append each record as it ends.
    Ctrl-C stops after keeping the finished records (result.interrupted = True)."""
    records_path = Path(run_dir) / "records.jsonl"
    done_ok: set[str] = set()
    if records_path.exists():
        from enact_bench.records import latest_by_case
        done_ok = {cid for cid, r in latest_by_case(read_records(records_path)).items() if r.status == "ok"}
    result = RunResult(run_dir=Path(run_dir), run_id=run_id)
    todo = [c for c in suite.cases if c.case_id not in done_ok]
    result.skipped_ok = [c.case_id for c in suite.cases if c.case_id in done_ok]
    try:
        for i, case in enumerate(todo):
            if on_start:
                on_start(i, len(todo), case)
            if inline or _needs_missing_cuda(case):  # a skipped case needs no subprocess
                rec = run_case(case, run_id=run_id, suite=suite.name)
            else:
                rec = run_case_subprocess(case, run_dir, run_id=run_id, suite=suite.name, timeout_s=timeout_s)
            append_record(records_path, rec)
            result.records.append(rec)
            if on_end:
                on_end(i, len(todo), rec)
    except KeyboardInterrupt:
        result.interrupted = True
    return result


# ---------------------------------------------------------------------------------------
# subprocess entry point
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m enact_bench.runner", description="Run one case; write its record.")
    p.add_argument("--case-json", required=True, help="file with {case, run_id, suite}")
    p.add_argument("--record-out", required=True, help="where to write the record (JSON)")
    args = p.parse_args(argv)
    spec = json.loads(Path(args.case_json).read_text())
    case = Case.from_dict(spec["case"])
    rec = run_case(case, run_id=spec.get("run_id", "subprocess"), suite=spec.get("suite", ""))
    tmp = Path(args.record_out).with_suffix(".tmp")
    tmp.write_text(rec.to_json())
    tmp.replace(args.record_out)  # atomic: the parent sees a whole record or none
    print(f"{rec.case_id}: {rec.status}" + (f" ({rec.error.splitlines()[0]})" if rec.error else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
