"""A short training run: the one training step (train/step.py) over a loader."""
from __future__ import annotations

import itertools

import torch

from enact_bench.data.batch import Batch
from enact_bench.train.optim import make_optimizer
from enact_bench.train.step import train_step


def train_steps(model, loader, steps: int, device: str | torch.device = "cpu", lr: float | None = None,
                lr_backbone: float | None = None) -> list[float]:
    """``steps`` training steps, cycling over ``loader``; returns the weighted loss of each step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    model.to(device).train()
    criterion = model.build_criterion().to(device)
    optimizer = make_optimizer(model, lr=lr, lr_backbone=lr_backbone)
    losses = []
    for images, targets in itertools.islice(itertools.cycle(loader), steps):
        batch = Batch(images=images, targets=targets).to(device)
        loss = train_step(model, criterion, optimizer, batch.images, batch.targets, clip_max_norm=model.grad_clip_max_norm)
        losses.append(float(loss))
    return losses
