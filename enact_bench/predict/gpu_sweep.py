"""One variant's plan on every GPU of the table from the fake steps of one (`enact-bench plan
--gpu all`).

What a plan takes from the GPU: the SDPA kernel each attention call gets (by compute capability:
the fake step itself), the cuBLAS workspaces replayed first (32 MiB on sm90, 8.125 MiB elsewhere:
the allocator replay), the CUDA context and the usable memory (the device figure and the budget).
So the GPUs are grouped by compute capability, and a group whose kernels agree with the first
GPU's for every SDPA call the probes made (predict/sdpa_calls.py) reuses its fake runs and fitted
streams; only a group with other kernels runs its own fake steps. Each GPU then searches its own
largest batch on those streams, starting from the first GPU's device bytes per image; the replays
are shared between GPUs with the same workspaces (VariantSearch's `replays`), the context and the
budget are each GPU's own. Rows here carry no breakdown (the first GPU's plan has them).
"""
from __future__ import annotations

import dataclasses
from collections import Counter

from enact_bench.predict.plan import PlanRequest, VariantPlan, VariantSpec
from enact_bench.predict.search import VariantSearch
from enact_bench.predict.variant_rows import fill_plan, searches, typical_plan


def _arch(gpu):
    from enact_bench.predict.cuda_policy import CudaArch

    return CudaArch(*gpu.compute_capability)


def _slope(plan: VariantPlan | None) -> int | None:
    """Device bytes per image between batch 2 and the largest batch of a searched plan."""
    if plan is None or not plan.max_batch_size or plan.max_batch_size <= 2:
        return None
    rows = {r.batch_size: r for r in plan.rows}
    top, two = rows.get(plan.max_batch_size), rows.get(2)
    if top is None or two is None:
        return None
    return max((top.device_used_bytes - two.device_used_bytes) // (plan.max_batch_size - 2), 1)


def same_kernels(measures, arch_a, arch_b) -> bool:
    """Whether every SDPA call of the fake runs `measures` gets the same kernel on both compute
    capabilities; False where a run recorded no calls' inputs, or where the kernels recomputed for
    arch_a differ from those the run counted (then the recording cannot be trusted)."""
    from enact_bench.predict.sdpa_calls import kernels_for

    for m in measures:
        if m.sdpa_calls is None:
            return False
        mine = kernels_for(m.sdpa_calls, arch_a)
        if Counter(mine) != Counter(m.sdpa_kernels) or kernels_for(m.sdpa_calls, arch_b) != mine:
            return False
    return True


def _reuse(req: PlanRequest, spec: VariantSpec, run: VariantSearch, other: VariantSearch | None,
           ref: VariantPlan) -> VariantPlan:
    """The plan on req.gpu from the fake runs and streams of another GPU's searches."""
    out = VariantPlan(spec.variant, True, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                      overrides=dict(spec.overrides))
    main = VariantSearch(req, spec, run.trainer, run.measures, breakdown=False, replays=run.replays, tag=run.tag)
    main.measures = run.measures  # shared: a fake run one GPU's search makes serves the others
    main.stream, main.affine_note = run.stream, run.affine_note
    fill_plan(out, main, req, _slope(ref))
    if other is not None:
        typical = VariantSearch(req.typical(), spec, run.trainer, other.measures, breakdown=False,
                                replays=other.replays, tag=other.tag)
        typical.measures = other.measures
        typical.stream, typical.affine_note = other.stream, other.affine_note
        out.typical = typical_plan(typical, spec, out, beside=False, slope_hint=_slope(ref.typical))
    return out


def plan_on_gpus(req: PlanRequest, spec: VariantSpec, run: VariantSearch, other: VariantSearch | None,
                 ref: VariantPlan, gpus) -> dict[str, VariantPlan]:
    """`ref` (the plan on req.gpu, from `run` and `other`) carried to every GPU in `gpus`."""
    out: dict[str, VariantPlan] = {}
    by_arch: dict = {}
    for g in gpus:
        by_arch.setdefault(_arch(g), []).append(g)
    probes = list(run.measures.values()) + (list(other.measures.values()) if other is not None else [])
    ref_arch = _arch(req.gpu)
    for arch, group in by_arch.items():
        base = (run, other, ref)
        if arch != ref_arch and not same_kernels(probes, ref_arch, arch):
            # other kernels: this group's own fake steps, on its first GPU, with the same trainer
            first = dataclasses.replace(req, gpu=group[0])
            trainer = run.trainer
            trainer.arch, before = arch, trainer.arch
            try:
                plan = VariantPlan(spec.variant, True, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                                   overrides=dict(spec.overrides))
                g_run, g_other = searches(first, spec, trainer, replays={})
                fill_plan(plan, g_run, first)
                if g_other is not None:
                    plan.typical = typical_plan(g_other, spec, plan)
            finally:
                trainer.arch = before
            plan.affine_note = f"{plan.affine_note or ''} (own fake steps: other SDPA kernels on sm{arch.major}{arch.minor})"
            base = (g_run, g_other, plan)
        for g in group:
            if g.name == req.gpu.name:
                out[g.name] = ref
            elif base[2] is not ref and g is group[0]:
                out[g.name] = base[2]
            else:
                out[g.name] = _reuse(dataclasses.replace(req, gpu=g), spec, base[0], base[1], base[2])
    return out
