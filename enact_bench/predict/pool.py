"""The plan's process pool: a search's probes batch by batch, then each variant in a process of
its own, all forked from the parent after the variants' trainers were built and primed there.

FakeTensorMode's dispatch cache lives in the process: the probes at one batch size run every
variant in one process, so the ops the variants share (backbone, decoder, loss at the same
shapes) miss the cache once per batch size instead of once per variant. `_FORKED` is what the
forked workers inherit (a module global, set only around the fork and cleared after).
"""
from __future__ import annotations

from enact_bench.predict.plan import PlanRequest, VariantPlan, VariantSpec
from enact_bench.predict.progress import report
from enact_bench.predict.search import AFFINE_ORIGIN, AFFINE_PROBES, probe_plan, trainer_for
from enact_bench.predict.variant_plan import plan_variant


# What forked workers inherit from plan_detector: the variants' trainers, built and primed once
# before the fork, the sizes probed ("main": the plan's, "typical": the typical batch's beside a
# run-worst plan) and the probes' fake runs (variant -> "main" | "typical" -> batch -> StepMeasure).
_FORKED: dict = {"trainers": {}, "probes": {}, "sizes": {}, "plan": {}}


def plan_variant_job(args) -> VariantPlan:
    import torch
    torch.set_num_threads(1)
    req, spec, gpus = args
    probes = _FORKED["probes"].get(spec.variant, {})
    return plan_variant(req, spec, _FORKED["trainers"].get(spec.variant), probes.get("main"), probes.get("typical"),
                        gpus)


def _indexed_job(item):
    i, args = item
    return i, plan_variant_job(args)


def _outcome(plan: VariantPlan) -> str:
    if plan.error:
        return "error"
    if plan.max_batch_size is None:
        return f"{len(plan.rows)} rows"
    typical = f", typical {plan.typical.max_batch_size}" if plan.typical is not None else ""
    return f"largest batch {plan.max_batch_size}{typical}"


def _probe_job(b: int) -> tuple[int, dict]:
    """The fake runs at one probe batch size, every variant in turn, in one process: FakeTensorMode's
    dispatch cache is shared within a process, so the backbone's, the decoder's and the loss's ops
    (the same shapes in every variant) miss it once here instead of once per variant (a third of a
    step's time goes to those misses). A variant that fails here runs again, and reports its
    error, in its own job."""
    import torch
    torch.set_num_threads(1)
    out = {}
    for variant, trainer in _FORKED["trainers"].items():
        for which in _FORKED["plan"][b]:  # the plan's size, the typical one beside it (search.probe_plan)
            hw = _FORKED["sizes"][which]
            try:
                out[(variant, which)] = trainer.step(b, record_events=True, image_size=hw,
                                                     breakdown=(b == AFFINE_ORIGIN and which == "main"))
            except Exception:  # noqa: BLE001 -- see the docstring
                pass
    return b, out


def probe_all(req: PlanRequest, specs: list[VariantSpec], pool_of) -> None:
    """A search's probes (AFFINE_PROBES and AFFINE_CONFIRM) for all variants, one process per
    batch size; sets _FORKED for the variants' own jobs."""
    trainers = {}
    for spec in specs:
        try:
            trainers[spec.variant] = trainer_for(req, spec)
            trainers[spec.variant].prime()
        except Exception:  # noqa: BLE001 -- the variant's own job builds it again and reports why
            trainers.pop(spec.variant, None)
    _FORKED["trainers"] = trainers
    _FORKED["plan"] = probe_plan(req)
    batches = tuple(_FORKED["plan"])
    typical = req.typical()
    _FORKED["sizes"] = {"main": req.hw(AFFINE_PROBES[0]), **({"typical": typical.hw(AFFINE_PROBES[0])} if typical else {})}
    report(f"{req.detector}: probes at batch {', '.join(map(str, batches))} for {', '.join(trainers)}, "
           f"one process per batch")
    done = []
    with pool_of(len(batches)) as pool:
        for b, out in pool.imap_unordered(_probe_job, batches, chunksize=1):
            done.append((b, out))
            sizes = sorted({f"{_FORKED['sizes'][w][0]}x{_FORKED['sizes'][w][1]}" for _, w in out})
            report(f"{req.detector}: probe at batch {b} done ({len(out)} fake steps at {', '.join(sizes)})")
    _FORKED["probes"] = {v: {which: {b: per[(v, which)] for b, per in done if (v, which) in per}
                             for which in _FORKED["sizes"]} for v in trainers}


def run_all(req: PlanRequest, specs: list[VariantSpec], workers: int, gpus: tuple = ()) -> list[VariantPlan]:
    """Every applicable variant's plan, in `workers` forked processes (the probes first, when a
    search will use them), in the order of `specs`."""
    import gc

    from enact_bench.lifeline import fork_pool

    # the ~400,000 objects of torch, torch._dynamo and sympy out of the garbage collector's
    # scans (a third of a second of collections per variant) and its writes into their pages,
    # which forked children would each copy
    gc.freeze()
    pool_of = fork_pool  # workers end with this process, even when it is killed
    jobs = [(req, s, gpus) for s in specs]
    try:
        if probe_plan(req):  # a search: its probes first, batch by batch
            probe_all(req, specs, pool_of)
        results = [None] * len(jobs)
        with pool_of(workers) as pool:
            for i, r in pool.imap_unordered(_indexed_job, list(enumerate(jobs)), chunksize=1):
                results[i] = r
                report(f"{req.detector}: {r.variant} planned ({_outcome(r)})")
    finally:
        gc.unfreeze()
        _FORKED.update(trainers={}, probes={}, sizes={}, plan={})
    # torch refuses autograd in a child forked after the parent ran a backward (its autograd
    # threads exist): those variants run here instead
    return [plan_variant(j[0], j[1], gpus=j[2]) if r.error and "Autograd-and-Fork" in r.error else r
            for j, r in zip(jobs, results)]
