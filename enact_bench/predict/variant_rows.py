"""The pieces of a variant's plan the single-GPU plan (predict/variant_plan.py) and the GPU sweep
(predict/gpu_sweep.py) share: its searches (`searches`), a VariantPlan filled from a search
(`fill_plan`) and the typical size's plan beside a run-worst one (`typical_plan`)."""
from __future__ import annotations

from enact_bench.predict.plan import PlanRequest, VariantPlan, VariantSpec
from enact_bench.predict.search import VariantSearch, fit_pair


def searches(req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None,
             typical_measures: dict | None = None, replays: dict | None = None):
    """The variant's VariantSearch and, for a run-worst request, the typical size's beside it
    (rows without breakdowns), their streams fitted together where a search will need them."""
    run = VariantSearch(req, spec, trainer, measures, replays=replays, tag="main")
    typical = req.typical()
    other = None
    if typical is not None:
        other = VariantSearch(typical, spec, run.trainer, typical_measures, breakdown=False, replays=replays,
                              tag="typical")
        if not req.batch_sizes:
            fit_pair(run, other)
    return run, other


def fill_plan(out: VariantPlan, run: VariantSearch, req: PlanRequest, slope_hint: int | None = None) -> None:
    """The rows of `run`: the batch sizes given (each a fake run; nothing searched, so no largest
    batch), or the search."""
    if req.batch_sizes:
        out.searched = False
        run.affine_note = "batch sizes given: each row a fake run"
        for b in req.batch_sizes:
            run.row(b)
        out.max_batch_size = None
    else:
        out.max_batch_size, out.linear = run.search(slope_hint)
    out.rows = [run.rows[b] for b in sorted(run.rows)]
    out.fake_runs = sorted(run.measures)
    out.affine_confirmed_at = run.stream.confirmed_at if run.stream is not None else None
    out.affine_note, out.ddp_bucket_bytes = run.affine_note, run.ddp_bucket_bytes


def typical_plan(run: VariantSearch, spec: VariantSpec, main_plan: VariantPlan, beside: bool = True,
             slope_hint: int | None = None) -> VariantPlan:
    """The plan at the typical size beside a run-worst one: its own search (or the batch sizes
    given), and (beside) its figure at each of the main plan's batch sizes, set on those rows."""
    out = VariantPlan(spec.variant, True, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                      overrides=dict(spec.overrides))
    try:
        fill_plan(out, run, run.req, slope_hint)
        for r in main_plan.rows if beside else ():
            if r.image_size == run.req.hw(r.batch_size):  # batch 1: the single worst image is the typical one
                r.set_typical(r)
            else:
                r.set_typical(run.row(r.batch_size))
        out.rows = [run.rows[b] for b in sorted(run.rows)]
        out.fake_runs = sorted(run.measures)
    except Exception as e:  # noqa: BLE001 -- reported beside the main plan
        out.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return out
