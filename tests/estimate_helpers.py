"""`estimate_detector`: the fake step of a registered detector at one size, for tests that hold
the CUDA target, DDP buckets or the gate's fake cases to known quantities."""
from __future__ import annotations

import torch

from enact_bench.detectors import create_detector
from enact_bench.predict.fake_step import estimate_train_step


def estimate_detector(name: str, batch_size: int, image_size: tuple[int, int], *, enact=False,
                      num_targets: int = 6, overrides: dict | None = None, target: str = "cpu",
                      warmup: str = "step", count_flops: bool = True, ddp: bool = False):
    """`estimate_train_step` for a registered detector (random weights; ENACT needs cluster_size)."""
    torch.manual_seed(0)
    model = create_detector(name, enact=enact, **(overrides or {}))
    clip = getattr(model, "grad_clip_max_norm", None) or 0.0
    return estimate_train_step(model, model.build_criterion(), batch_size, image_size,
                               num_targets=num_targets, num_classes=getattr(model, "num_classes", 91),
                               clip_max_norm=clip, target=target, warmup=warmup, count_flops=count_flops, ddp=ddp)
