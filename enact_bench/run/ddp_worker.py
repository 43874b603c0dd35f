"""One DistributedDataParallel rank of a torchrun case; torchrun starts nproc of these per node.

    python -m torch.distributed.run --standalone --nproc-per-node=N \\
        -m enact_bench.run.ddp_worker --case-json CASE.json --record-out RECORD.json --work-dir DIR

What each rank does, as the originals' main.py (DETR, Deformable DETR, DINO; all launched with
torch.distributed.launch and wrapped in DistributedDataParallel):
- initialises the default process group from torchrun's environment: NCCL on CUDA with one GPU
  per rank (cuda:LOCAL_RANK), Gloo on CPU;
- seeds torch with seed + rank (the originals' `seed = args.seed + utils.get_rank()`), builds the
  detector, wraps it as `DistributedDataParallel(model, device_ids=[gpu])` (on CPU without
  device_ids), with DDP's defaults: 25 MiB buckets, gradient_as_bucket_view=False,
  find_unused_parameters=False (DINO's --find_unused_params is off unless given);
- reads its own batches: synthetic ones seeded with seed + rank; COCO/toy through a
  DistributedSampler shard;
- measures exactly the single-process protocol (run/case.py measure_case): warm-up, timed steps, one
  step with the memory trackers around it, FLOPs and evaluation hooks (on every rank, since the
  criterion all-reduces its box count; the record keeps rank 0's);
- rank 0 gathers every rank's figures (dist.gather_object) and writes the one record.

A rank that fails writes DIR/rank<R>.json ({"status": "oom" | "error", "error": ..., "time": ...})
and exits 1; torchrun then stops the other ranks and the launcher (run/torchrun.py) turns the
first of those files into the case's record (the other ranks' collectives fail after it, with
"connection closed by peer"). Every rank writes its pid to DIR/rank<R>.pid first, so the launcher can make sure
that no rank outlives the case.

For tests, ENACT_BENCH_FAULT="KIND@rankR" makes rank R fail in its first training step: KIND is
oom (a torch.OutOfMemoryError), error (a RuntimeError) or hang (sleeps; for the timeout tests).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
from pathlib import Path

# per-rank figures (enact_bench/metrics.py has them as NAME_per_rank); the record's NAME of
# MAX_OVER_RANKS is their maximum
MAX_OVER_RANKS = ("mem_peak_alloc_mib", "mem_peak_reserved_mib", "nvml_device_used_peak_mib",
                  "nvml_process_used_peak_mib", "cpu_tracked_peak_bytes", "cpu_tracked_peak_mib",
                  "rss_peak_mib")
PER_RANK = MAX_OVER_RANKS + ("cpu_tracked_start_bytes", "step_ms_p50", "first_step_ms", "images_per_s")
STEP_FIELDS = ("step_ms_p50", "step_ms_p10", "step_ms_p25", "step_ms_p75", "step_ms_p90", "step_ms_mean",
               "step_ms_iqr", "step_count")


def combine_ranks(per_rank: list[dict], batch_size: int) -> tuple[dict, dict]:
    """Rank 0's metrics, with the per-rank figures of every rank (index = rank) and the record's
    figures across ranks: memory = the largest rank's (the per-GPU figure), step time = the
    slowest rank's (a DDP step waits for it), images/s = world batch / that rank's median step.
    Returns (metrics, null_reasons)."""
    world = len(per_rank)
    metrics = dict(per_rank[0]["metrics"])
    reasons = dict(per_rank[0]["reasons"])
    for k in PER_RANK:
        values = [r["metrics"].get(k) for r in per_rank]
        metrics[f"{k}_per_rank"] = values
        if all(v is None for v in values):
            reasons[f"{k}_per_rank"] = reasons.get(k, "not measured")
    for k in MAX_OVER_RANKS:
        values = [r["metrics"].get(k) for r in per_rank]
        if any(v is not None for v in values):
            metrics[k] = max(v for v in values if v is not None)
    peaks = metrics["mem_peak_alloc_mib_per_rank"]
    if all(v is None for v in peaks):
        peaks = metrics["cpu_tracked_peak_bytes_per_rank"]
    metrics["peak_rank"] = max(range(world), key=lambda r: peaks[r]) if all(v is not None for v in peaks) else None
    if metrics["peak_rank"] is not None:
        metrics["cpu_tracked_start_bytes"] = per_rank[metrics["peak_rank"]]["metrics"].get("cpu_tracked_start_bytes")
    else:
        reasons["peak_rank"] = "no memory figure on every rank"
    medians = metrics["step_ms_p50_per_rank"]
    metrics["world_size"] = world
    metrics["world_batch_size"] = world * batch_size
    if all(v is not None for v in medians):
        slow = max(range(world), key=lambda r: medians[r])
        metrics["slowest_rank"] = slow
        for k in STEP_FIELDS:
            metrics[k] = per_rank[slow]["metrics"].get(k)
        metrics["images_per_s"] = world * batch_size * 1e3 / medians[slow] if medians[slow] else None
    else:
        metrics["slowest_rank"] = None
        reasons["slowest_rank"] = "no step time on every rank"
    metrics["scaling_efficiency"] = metrics["scaling_baseline_case_id"] = None
    reasons["scaling_baseline_case_id"] = "no scaling efficiency"
    reasons.setdefault("scaling_efficiency", "no case with nproc = 1 and otherwise the same configuration "
                                             "ran before this one in the run")
    return metrics, reasons


def _fault(kind_at: str | None, rank: int):
    """The test hook: a callable to run at the start of each training step (or None)."""
    if not kind_at:
        return None
    kind, _, where = kind_at.partition("@rank")
    if not where.isdigit() or int(where) != rank:
        return None

    def fail():
        import torch
        if kind == "oom":
            raise torch.OutOfMemoryError(f"ENACT_BENCH_FAULT: simulated out of memory on rank {rank}")
        if kind == "hang":
            time.sleep(3600)
        raise RuntimeError(f"ENACT_BENCH_FAULT: simulated failure on rank {rank}")
    return fail


def _rank_source(case, rank: int, world: int):
    """This rank's batches: synthetic with seed + rank; COCO/toy a DistributedSampler shard."""
    from enact_bench.data.sources import make_data_source

    source = make_data_source(dataclasses.replace(case, seed=case.seed + rank))
    if hasattr(source, "shard"):
        source.shard(world, rank, seed=case.seed)
    return source


def run_rank(case, rank: int, local_rank: int, world: int) -> dict:
    """Measure this rank; returns {"metrics", "reasons", "record_case", "env"}."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from enact_bench.predict.ddp_buckets import reducer_bucket_bytes
    from enact_bench.run import case as case_mod
    from enact_bench.records import capture_env

    if case.cpu_threads:
        torch.set_num_threads(case.cpu_threads)
    cuda = torch.device(case.device).type == "cuda"
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    torch.backends.cuda.matmul.allow_tf32 = case.tf32
    torch.backends.cudnn.allow_tf32 = case.tf32
    torch.backends.cudnn.benchmark = case.cudnn_benchmark
    env = capture_env(str(device))

    from enact_bench import metrics as metrics_schema
    metrics = {k: None for k in metrics_schema.record_metric_names(torchrun=True)}
    reasons: dict[str, str] = {}
    record_case = case.to_dict()
    record_case["dist_backend"] = dist.get_backend()
    holder: dict = {}
    fault = _fault(os.environ.get("ENACT_BENCH_FAULT"), rank)

    class DetectorDDP(DistributedDataParallel):
        """DDP of a detector that also post-processes (the originals call it on the unwrapped
        model, `model_without_ddp`); nothing else differs from DistributedDataParallel."""

        def postprocess(self, *args, **kwargs):
            return self.module.postprocess(*args, **kwargs)

    def wrap(model):
        ddp = DetectorDDP(model, device_ids=[local_rank] if cuda else None)
        holder["ddp"] = ddp
        if fault is not None:
            ddp.register_forward_pre_hook(lambda module, args: fault())
        return ddp

    # torch.manual_seed(case.seed) inside measure_case: the originals seed with seed + rank
    case_for_rank = dataclasses.replace(case, seed=case.seed + rank)
    case_mod.measure_case(case_for_rank, metrics, reasons, record_case, wrap=wrap,
                          source=_rank_source(case, rank, world))
    record_case["seed"] = case.seed  # the record states the case's seed; rank r used seed + r
    if case.mode == "train":
        buckets = reducer_bucket_bytes(holder["ddp"])
        metrics["ddp_bucket_bytes"], metrics["ddp_bucket_count"] = sum(buckets), len(buckets)
    else:
        reasons["ddp_bucket_bytes"] = reasons["ddp_bucket_count"] = "infer mode: DDP reduces no gradients"
    return {"metrics": metrics, "reasons": reasons, "record_case": record_case, "env": env}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)  # atomic: the launcher sees a whole file or none


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m enact_bench.run.ddp_worker",
                                description="One DDP rank of a torchrun case (started by torchrun).")
    p.add_argument("--case-json", required=True, help="file with {case, run_id, suite}")
    p.add_argument("--record-out", required=True, help="where rank 0 writes the record (JSON)")
    p.add_argument("--work-dir", required=True, help="folder for the ranks' pid and failure files")
    args = p.parse_args(argv)
    from enact_bench import lifeline
    lifeline.end_with_parent()  # torchrun's pid, from $ENACT_BENCH_PARENT_PID: this rank ends with it
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    work = Path(args.work_dir)
    (work / f"rank{rank}.pid").write_text(str(os.getpid()))

    from enact_bench.records import Record, utc_now
    from enact_bench.run.case import is_oom
    from enact_bench.suite.case import Case

    import importlib

    from enact_bench.run.launch import CASE_IMPORTS_ENV
    for name in filter(None, (m.strip() for m in os.environ.get(CASE_IMPORTS_ENV, "").split(","))):
        importlib.import_module(name)  # the user's own detectors, sources, evaluations
    spec = json.loads(Path(args.case_json).read_text())
    case = Case.from_dict(spec["case"])
    started, t0 = utc_now(), time.perf_counter()
    try:
        mine = run_rank(case, rank, local_rank, world)
        import torch.distributed as dist
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
    except Exception as e:  # noqa: BLE001 -- this rank's failure is the case's result
        status = "oom" if is_oom(e) else "error"
        msg = f"rank {rank}: {type(e).__name__}: {e}"
        if status == "error":
            msg += "\n" + "".join(traceback.format_exception(e)[-6:])
        _write_json(work / f"rank{rank}.json", {"rank": rank, "status": status, "error": msg, "time": time.time()})
        print(msg, file=sys.stderr, flush=True)
        return 1
    if rank == 0:
        metrics, reasons = combine_ranks([g for g in gathered], case.batch_size)
        for k, v in metrics.items():
            if v is None and k not in reasons:
                reasons[k] = "not measured"
        rec = Record(run_id=spec.get("run_id", "torchrun"), suite=spec.get("suite", ""), case_id=case.case_id,
                     status="ok", case=mine["record_case"], metrics=metrics, null_reasons=reasons,
                     env=mine["env"], error=None, started_at=started,
                     duration_s=round(time.perf_counter() - t0, 3))
        tmp = Path(args.record_out).with_suffix(".tmp")
        tmp.write_text(rec.to_json())
        tmp.replace(args.record_out)
        print(f"{rec.case_id}: ok (world size {world})", flush=True)
    import torch.distributed as dist
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
