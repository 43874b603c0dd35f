"""A short training run: the originals' step (loss sum, backward, grad clipping, AdamW) over a loader."""
from __future__ import annotations

import itertools

import torch


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
    weights = criterion.weight_dict
    optimizer = torch.optim.AdamW(model.param_groups(lr=lr, lr_backbone=lr_backbone))
    losses = []
    for images, targets in itertools.islice(itertools.cycle(loader), steps):
        images = [im.to(device) for im in images]
        targets = move_targets(targets, device)
        parts = criterion(model(images, targets=targets), targets)  # DINO builds denoising queries from targets
        loss = sum(parts[k] * weights[k] for k in parts if k in weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if model.grad_clip_max_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), model.grad_clip_max_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses
