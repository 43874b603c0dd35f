"""One variant's plan: the rows at the batch sizes asked for, or the search for the largest
batch (predict/search.py), as a VariantPlan. A variant that fails is a result of the plan (its
error), not a crash of the others."""
from __future__ import annotations

import time

from enact_bench.errors import UserInputError
from enact_bench.predict.gpu_sweep import plan_on_gpus
from enact_bench.predict.plan import PlanRequest, VariantPlan, VariantSpec
from enact_bench.predict.variant_rows import fill_plan, searches, typical_plan


def plan_variant(req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None,
                 typical_measures: dict | None = None, gpus: tuple = ()) -> VariantPlan:
    """One variant's plan; `trainer` and `measures` as VariantSearch takes them (their fake runs' time
    counts in `seconds`); `typical_measures`: the fake runs already made at the typical size
    (run-worst requests, whose plan carries the typical batch's beside it). `gpus`: other GPUs to
    plan from the same fake steps where they make the same ones (predict/gpu_sweep.py), returned
    in `gpu_plans`."""
    t0 = time.perf_counter() - sum(m.seconds for m in (measures or {}).values())
    t0 -= sum(m.seconds for m in (typical_measures or {}).values())
    out = VariantPlan(spec.variant, spec.applicable, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                      overrides=dict(spec.overrides))
    if not spec.applicable:
        if gpus:
            out.gpu_plans = {g.name: out for g in gpus}
        return out
    try:
        run, other = searches(req, spec, trainer, measures, typical_measures, replays={})
        fill_plan(out, run, req)
        # a source model: what its fake steps assumed, and the attention its model was built with
        out.assumptions = next((m.assumptions for m in run.measures.values() if m.assumptions), [])
        out.attention = getattr(getattr(run._trainer, "model", None), "attention", None)
        if other is not None:
            out.typical = typical_plan(other, spec, out)
        if req.curve_points and out.searched:
            out.curve = curve(run, other, out, req.curve_points)
        if req.steps:
            from enact_bench.predict.steps_plan import plan_steps

            batch = out.max_batch_size if out.searched else max(req.batch_sizes)
            out.steps = plan_steps(req, spec, run.trainer, max(batch or 1, 1))
        if gpus:
            out.gpu_plans = plan_on_gpus(req, spec, run, other, out, gpus)
    except UserInputError as e:  # e.g. a source model whose output has no loss: the user's to fix
        out.error, out.user_error = str(e).splitlines()[0][:300], True
    except Exception as e:  # noqa: BLE001 -- one variant failing is a result of the plan
        out.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    out.seconds = time.perf_counter() - t0
    return out


def curve(run, other, plan: VariantPlan, points: int) -> list[dict]:
    """Device memory at `points` batch sizes from 1 to past the largest batches (the run-worst
    and the typical one), from the confirmed streams (no breakdowns); for --plot."""
    from enact_bench.metrics import MIB

    top = max(plan.max_batch_size or 1, (plan.typical.max_batch_size or 1) if plan.typical else 1) + 1
    sizes = sorted({max(2, round(2 + k * (top - 2) / max(points - 1, 1))) for k in range(points)})
    out = []
    for b in sizes:
        if run.stream is None or (other is not None and other.stream is None):
            break  # only where no fake run is needed
        entry = {"batch_size": b, "device_used_mib": round(run.row(b, breakdown=False).device_used_bytes / MIB, 1)}
        if other is not None:
            entry["typical_device_used_mib"] = round(other.row(b).device_used_bytes / MIB, 1)
        out.append(entry)
    return out
