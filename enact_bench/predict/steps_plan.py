"""`plan --steps N`: N training steps whose padded shapes are drawn from the augmentation, replayed
through one caching-allocator model, against one step of the worst shape.

Each step's batch is `batch` images drawn (with the seed) from the source sizes (a COCO file's
images with --sizes-from, else data/augmentation_sizes.ASSUMED_SOURCE_SIZES, an assumption)
through the train transform and padded to the largest height and width, as the originals'
collate does; the padded size is then rounded up to a multiple of the backbone's largest stride
(and, for ENACT, to a token count that is a multiple of its cluster size: predict/size_stream.py),
so that one stream model covers every step: four fake runs at the corners of a square at the
typical size, confirmed by a fifth at the worst padded size. The steps' streams go through predict/run_replay.py's single allocator model with
the GPU's workspaces and limit.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from enact_bench.metrics import MIB


@dataclass
class StepsResult:
    batch_size: int
    steps: int
    seed: int
    sources: str  # where the source image sizes came from (a file, or the labelled assumption)
    quantum: int  # padded sizes rounded up to multiples of this (the backbone's largest stride)
    shapes: list  # per step the padded (H, W), rounded up
    worst_hw: tuple[int, int]  # the worst padded size the sources can form, rounded up: the single step compared
    one_step_reserved_bytes: int
    one_step_device_bytes: int
    run_alloc_peak_bytes: int
    run_reserved_bytes: int  # reserved after the run (the allocator only releases on a failed cudaMalloc)
    run_device_bytes: int
    fits: bool  # the run within the plan's budget, no out-of-memory
    oom_step: int | None = None
    retries: int = 0
    stream: str = ""  # how the steps' streams were made
    fake_runs: list = field(default_factory=list)  # the (H, W) of each fake run made for them
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size, "steps": self.steps, "seed": self.seed, "sources": self.sources,
                "quantum": self.quantum, "distinct_shapes": len(set(self.shapes)),
                "shapes": [list(s) for s in self.shapes], "worst_image_size": list(self.worst_hw),
                "one_step_reserved_mib": round(self.one_step_reserved_bytes / MIB, 1),
                "one_step_device_used_mib": round(self.one_step_device_bytes / MIB, 1),
                "run_alloc_peak_mib": round(self.run_alloc_peak_bytes / MIB, 1),
                "run_reserved_mib": round(self.run_reserved_bytes / MIB, 1),
                "run_device_used_mib": round(self.run_device_bytes / MIB, 1), "fits": self.fits,
                "oom_step": self.oom_step, "cache_releases": self.retries, "stream": self.stream,
                "fake_runs": [list(s) for s in self.fake_runs], "seconds": round(self.seconds, 2)}


def plan_steps(req, spec, trainer, batch: int) -> StepsResult:
    """req.steps steps at `batch` on req.gpu with the variant's FakeTrainer (module docstring)."""
    from enact_bench.detectors.registry import get_spec
    from enact_bench.data.augmentation_sizes import (ASSUMED_SOURCE_SIZES, TYPICAL_HW, augmentation_for,
                                                     sample_padded_sizes, worst_from_sizes, worst_padded_batch,
                                                     worst_single_image)
    from enact_bench.predict.device_memory import device_memory
    from enact_bench.predict.gpus import device_used_bytes, library_workspace_bytes
    from enact_bench.predict.progress import report
    from enact_bench.predict.run_replay import replay_run
    from enact_bench.predict.size_stream import FAMILY_QUANTUM, NotAffine, corners, fit_sizes, quantized

    t0 = time.perf_counter()
    family = get_spec(req.detector).family
    q = FAMILY_QUANTUM.get(family, 64)
    # token counts a multiple of ENACT's L (its windows tile them) and, where SDPA gets the padding
    # mask, of 8 (the memory-efficient kernel pads an unaligned mask with other ops: cuda_policy.py)
    mult = math.lcm(spec.enact_cluster_size or 1, 8 if spec.overrides.get("attention") == "sdpa" else 1)
    sources = req.source_sizes or ASSUMED_SOURCE_SIZES
    aug = req.augmentation or augmentation_for(family)
    shapes = [quantized(hw, q, mult) for hw in sample_padded_sizes(req.seed, batch, req.steps, sources, aug)]
    # the worst padded batch these sources can form (the dataset's exact one with --sizes-from)
    if req.source_sizes:
        d = worst_from_sizes(req.source_sizes, aug)
        worst = quantized(d.single_hw if batch == 1 else d.padded_hw, q, mult)
    else:
        worst = quantized(worst_single_image(aug) if batch == 1 else worst_padded_batch(aug), q, mult)
    origin = quantized(req.images.typical_hw or TYPICAL_HW, q, mult)
    runs: dict = {}

    def fake(hw):
        if hw not in runs:
            report(f"{req.detector}: --steps fake training step at batch {batch}, {hw[0]}x{hw[1]}")
            runs[hw] = trainer.step(batch, record_events=True, image_size=hw)
        return runs[hw]

    square = corners(origin, q, mult)
    check = worst if worst not in square else quantized((origin[0] + 3 * q * mult, origin[1] + 2 * q * mult), q, mult)
    try:
        probes = [fake(c) for c in square]
        model = fit_sizes(batch, origin, q, [(m.events, m.event_shapes, m.event_ops) for m in probes], mult)
        model = model.confirm(check, fake(check).events)
        how = (f"one stream model in the padded size from fake runs at the corners {origin[0]}x{origin[1]} + "
               f"{q * mult} px, confirmed by one at {check[0]}x{check[1]}")

        def events(hw):
            return model.synthesize(hw)
    except NotAffine as e:
        how = f"a fake run per distinct shape (the size model was refused: {e})"

        def events(hw):
            return fake(hw).events
    counts = fake(check).live_before_counts
    gpu = req.gpu
    work = library_workspace_bytes(gpu)
    run = replay_run(((events(hw), counts) for hw in shapes), preallocate=work,
                     memory_limit_bytes=gpu.allocator_limit_bytes)
    one = device_memory(events(worst), gpu)
    run_device = device_used_bytes(run.stats, gpu)
    return StepsResult(batch, req.steps, req.seed, req.sources_label or "ASSUMED source sizes (data/augmentation_sizes.py "
                       "ASSUMED_SOURCE_SIZES)", q, shapes, worst, one.reserved_peak_bytes, one.device_used_bytes,
                       run.stats.alloc_peak_bytes, run.stats.reserved_end_bytes, run_device,
                       run.oom_step is None and run_device <= req.budget_bytes, run.oom_step, run.retries, how,
                       sorted(runs), time.perf_counter() - t0)
