"""A short training run: the one training step (train/step.py) over a loader."""
from __future__ import annotations

import itertools

import torch

from enact_bench.train.step import train_step


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]


def train_steps(model, loader, steps: int, device: str | torch.device = "cpu", lr: float | None = None,
                lr_backbone: float | None = None) -> list[float]:
    """``steps`` training steps, cycling over ``loader``; returns the weighted loss of each step."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device)
    model.to(device).train()
    criterion = model.build_criterion().to(device)
    optimizer = torch.optim.AdamW(model.param_groups(lr=lr, lr_backbone=lr_backbone))
    losses = []
    for images, targets in itertools.islice(itertools.cycle(loader), steps):
        images = [im.to(device) for im in images]
        targets = move_targets(targets, device)
        loss = train_step(model, criterion, optimizer, images, targets, clip_max_norm=model.grad_clip_max_norm)
        losses.append(float(loss))
    return losses
