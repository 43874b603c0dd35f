"""A case's model and its steps: the detector the case names, and the closures the trackers time
and measure, built on the one train / infer step of enact_bench.train.step.

Train: AdamW over `model.param_groups()` with `model.default_optimizer_kwargs`; gradient clipping
at the case's `clip_max_norm` (None: the detector's own, 0: off). Infer: `model.eval()`, a step is
a no-grad forward + `model.postprocess`. Mixed precision (`dtype` bfloat16/float16) autocasts
the forward and the loss; parameters stay float32.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Callable

from enact_bench.suite.case import Case


def build_model(case: Case):
    """The case's detector (random weights, or its checkpoint loaded), on the CPU."""
    from enact_bench.detectors import build_variant, load_checkpoint

    model = build_variant(case.detector, enact=case.enact, enact_config=case.enact_config,
                          num_classes=case.num_classes, overrides=case.overrides)
    if case.checkpoint:
        load_checkpoint(model, case.checkpoint, trust=case.trust_checkpoint)
    return model


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def autocast_for(case: Case, device) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the case's autocast context (a no-op for float32)."""
    import torch
    if case.dtype == "float32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=getattr(torch, case.dtype))


def clip_norm_of(case: Case, model, default: float | None = None) -> float | None:
    """The case's gradient clipping: its own value, else the detector's (else `default`)."""
    if case.clip_max_norm is not None:
        return case.clip_max_norm
    return getattr(model, "grad_clip_max_norm", default)


@dataclass
class CaseSteps:
    """step(): the measured step; forward_only(): one forward (FLOPs); forward_backward(): forward
    + loss + backward without the optimizer step (training only, else None). Each reads
    holder["batch"], a data.sources.Batch already on the device."""

    step: Callable[[], None]
    forward_only: Callable[[], None]
    forward_backward: Callable[[], None] | None


def case_steps(case: Case, model, device, holder: dict, forward=None) -> CaseSteps:
    """`forward`: what the measured step calls instead of `model` (its DistributedDataParallel
    wrapper under torchrun); the FLOPs passes call `model` itself."""
    from enact_bench.train import step as steps
    from enact_bench.train.optim import make_optimizer

    amp = autocast_for(case, device)
    if case.mode == "train":
        model.train()
        criterion = model.build_criterion().to(device)
        opt = make_optimizer(model)
        clip = clip_norm_of(case, model)

        def step():
            b = holder["batch"]
            steps.train_step(forward or model, criterion, opt, b.images, b.targets, clip_max_norm=clip,
                             autocast=amp)

        return CaseSteps(
            step,
            lambda: steps.forward_only(model, holder["batch"].images, holder["batch"].targets, autocast=amp),
            lambda: steps.forward_backward(model, criterion, opt, holder["batch"].images, holder["batch"].targets,
                                           autocast=amp))

    model.eval()

    def infer():
        b = holder["batch"]
        steps.infer_step(forward or model, b.images, b.sizes, autocast=amp)

    return CaseSteps(infer, lambda: steps.forward_only(model, holder["batch"].images, autocast=amp), None)
