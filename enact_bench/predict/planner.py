"""`plan_detector`: the plan's control flow for one detector, readable here from top to bottom.

1. The detector's family decides which variants apply (predict/plan.py's variant_spec).
2. With several variants, predict/pool.py forks: a search's probes batch by batch, then each
   variant's own job; else each variant runs here.
3. Each variant's job is predict/variant_plan.plan_variant: its rows, or the search
   (predict/search.VariantSearch: probe, fit the stream, search).
"""
from __future__ import annotations

import dataclasses
import time

from enact_bench.errors import UserInputError
from enact_bench.predict.plan import DetectorPlan, PlanRequest, variant_spec
from enact_bench.predict.pool import run_all
from enact_bench.predict.progress import report
from enact_bench.predict.variant_plan import plan_variant


def detector_family(detector: str) -> str:
    from enact_bench.detectors.registry import get_spec

    try:
        return get_spec(detector).family
    except KeyError as e:
        raise UserInputError(str(e).strip("'\"")) from None


def _preload() -> None:
    import torch  # noqa: F401

    import enact  # noqa: F401
    import enact_bench.predict.allocator  # noqa: F401
    import enact_bench.predict.fake_step  # noqa: F401
    from enact_bench.detectors import list_detectors

    list_detectors()  # imports every family module


def plan_detector(req: PlanRequest) -> DetectorPlan:
    """Every variant of the request's detector: built, probed, fitted and searched (or run at the
    batch sizes given), in forked processes when there is more than one variant to plan."""
    return _plan(req, ())[0]


def plan_detector_gpus(req: PlanRequest, gpus) -> list[DetectorPlan]:
    """The plan on each GPU of `gpus`, in their order, from one set of fake steps wherever the
    GPUs make the same ones (predict/gpu_sweep.py); req.gpu is the one planned first."""
    gpus = tuple(gpus)
    return _plan(req, gpus)


def _plan(req: PlanRequest, gpus: tuple) -> list[DetectorPlan]:
    t0 = time.perf_counter()
    family = detector_family(req.detector)
    specs = [variant_spec(family, v, req.enact_cluster_size) for v in req.variants]
    applicable = [s for s in specs if s.applicable]
    report(f"{req.detector}: importing torch and the detectors")
    _preload()  # imported once here, shared by the forked workers
    report(f"{req.detector}: building the variants' models ({', '.join(s.variant for s in applicable)})")
    # one process per variant even on fewer cores: the OS shares them, and the slowest variant
    # does not wait for a core behind another one
    workers = req.jobs if req.jobs is not None else min(len(applicable), 4)
    if workers > 1 and len(applicable) > 1:
        done = iter(run_all(req, applicable, workers, gpus))
    else:
        done = iter([plan_variant(req, s, gpus=gpus) for s in applicable])
    plans = [next(done) if s.applicable else plan_variant(req, s, gpus=gpus) for s in specs]
    seconds = time.perf_counter() - t0
    if not gpus:
        return [DetectorPlan(req, family, plans, seconds)]
    out = []
    for g in gpus:
        # a variant that failed before the sweep shows its error on every GPU
        per_gpu = [(v.gpu_plans or {}).get(g.name, v) for v in plans]
        out.append(DetectorPlan(dataclasses.replace(req, gpu=g), family, per_gpu, seconds))
    return out

