"""One variant's plan: the rows at the batch sizes asked for, or the search for the largest
batch (predict/search.py), as a VariantPlan. A variant that fails is a result of the plan (its
error), not a crash of the others."""
from __future__ import annotations

import time

from enact_bench.predict.plan import PlanRequest, VariantPlan, VariantSpec
from enact_bench.predict.search import VariantSearch


def plan_variant(req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None) -> VariantPlan:
    """One variant's plan; `trainer` and `measures` as VariantSearch takes them (their fake runs' time
    counts in `seconds`)."""
    t0 = time.perf_counter() - sum(m.seconds for m in (measures or {}).values())
    out = VariantPlan(spec.variant, spec.applicable, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                      overrides=dict(spec.overrides))
    if not spec.applicable:
        return out
    try:
        run = VariantSearch(req, spec, trainer, measures)
        if req.batch_sizes:
            out.searched = False
            run.affine_note = "batch sizes given: each row a fake run"
            for b in req.batch_sizes:
                run.row(b)
            fitting = [b for b in req.batch_sizes if run.rows[b].fits]
            out.max_batch_size = max(fitting) if fitting else 0
        else:
            out.max_batch_size, out.linear = run.search()
        out.rows = [run.rows[b] for b in sorted(run.rows)]
        out.fake_runs = sorted(run.measures)
        out.affine_confirmed_at = run.stream.confirmed_at if run.stream is not None else None
        out.affine_note, out.ddp_bucket_bytes = run.affine_note, run.ddp_bucket_bytes
    except Exception as e:  # noqa: BLE001 -- one variant failing is a result of the plan
        out.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    out.seconds = time.perf_counter() - t0
    return out
