"""The one training step and the one weighted loss, over a model, its criterion and a batch.

Everything that trains uses these: the harness's measured steps (enact_bench.run.steps), the
fake-tensor estimate (predict/fake_step.py) and the short training runs before an evaluation
(evaluate/train_loop.py). No Case here: the run package wires a suite's case to them.

A training step, in the released trainers' order (DETR's engine.train_one_epoch):
forward (the targets go in too: DINO builds its denoising queries from them) and the weighted
loss sum; `zero_grad(set_to_none=True)` after the forward, so the previous step's gradients are
alive during it; backward; gradient clipping when `clip_max_norm` is set (> 0); optimizer step.
A model here has the detectors' interface: `model(images, mask=None, targets=None) -> dict` and,
for inference, `model.postprocess(outputs, sizes)`; a criterion returns a dict of loss terms and
has a `weight_dict`.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
from torch import nn

Ctx = Callable[[], ContextManager]


def weighted_loss(losses: dict, weights: dict) -> torch.Tensor:
    """sum(losses[k] * weights[k]) over the terms that have a weight (the originals' total loss)."""
    return sum(losses[k] * weights[k] for k in losses if k in weights)


def loss_of(criterion: nn.Module, outputs: dict, targets: list[dict]) -> torch.Tensor:
    """The criterion's terms, weighted by its `weight_dict`, summed: a 0-dim tensor."""
    return weighted_loss(criterion(outputs, targets), criterion.weight_dict)


def train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, images, targets,
               *, mask: torch.Tensor | None = None, clip_max_norm: float | None = None,
               autocast: Ctx = nullcontext, forward_ctx: Ctx = nullcontext,
               backward_ctx: Ctx = nullcontext, foreach: bool | None = None, scaler=None) -> torch.Tensor:
    """One training step; returns the loss, detached (0-dim, on the model's device).

    images: a list of (3, H_i, W_i) tensors or a padded (B, 3, H, W) tensor with its (B, H, W)
    `mask`; targets: DETR-style dicts. `autocast` wraps forward and loss (mixed precision);
    `forward_ctx` / `backward_ctx` let a measurement wrap the forward+loss and the backward.
    `foreach` goes to clip_grad_norm_ (None: torch's default; the CUDA-target estimate passes
    True, what CUDA tensors get by default). `scaler`: a torch.amp.GradScaler (float16 training):
    the loss is scaled for backward, the gradients unscaled before clipping (torch.amp's recipe),
    and the scaler steps the optimizer and updates its scale.
    """
    with autocast(), forward_ctx():
        outputs = model(images, mask, targets=targets)
        loss = loss_of(criterion, outputs, targets)
    del outputs  # the graph keeps what backward needs; the output dict itself goes
    optimizer.zero_grad(set_to_none=True)  # after the forward: the previous gradients are freed here
    with backward_ctx():
        (scaler.scale(loss) if scaler is not None else loss).backward()
    if clip_max_norm:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm, foreach=foreach)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach()


def infer_step(model: nn.Module, images, sizes: torch.Tensor, *, autocast: Ctx = nullcontext) -> list[dict]:
    """No-grad forward + post-processing to absolute boxes in `sizes` ((B, 2) of (h, w))."""
    with torch.no_grad(), autocast():
        return model.postprocess(model(images), sizes)


def forward_only(model: nn.Module, images, targets=None, *, autocast: Ctx = nullcontext) -> None:
    """One forward and nothing else (FLOPs of the forward). Targets go in only in training."""
    if model.training:
        with autocast():
            model(images, targets=targets)
    else:
        with torch.no_grad(), autocast():
            model(images)


def forward_backward(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, images, targets,
                     *, autocast: Ctx = nullcontext) -> None:
    """Forward + loss + backward, without the optimizer step (FLOPs of forward+backward)."""
    with autocast():
        loss = loss_of(criterion, model(images, targets=targets), targets)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)
