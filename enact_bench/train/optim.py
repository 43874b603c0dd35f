"""The optimizer every training step uses (real cases, fake steps, the plan's validation, the
short training loop): AdamW as the originals build it, and the state a first step leaves.

The originals build `AdamW(param_groups, lr=args.lr, weight_decay=args.weight_decay)` with two
groups: the backbone's trainable parameters at `lr_backbone`, the rest at `lr`
(Detector.param_groups). A model without `param_groups` (one we did not write) gets one group of
its trainable parameters at lr 1e-4, weight decay 1e-4 (the originals' defaults).
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_LR = 1e-4
DEFAULT_WEIGHT_DECAY = 1e-4


def make_optimizer(model: nn.Module, *, foreach: bool | None = None, lr: float | None = None,
                   lr_backbone: float | None = None) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups with its default kwargs (lr, weight_decay).

    foreach=None is torch's default (per tensor on CPU and for fake tensors; foreach on CUDA,
    torch/optim/optimizer.py _default_to_fused_or_foreach); True forces the foreach
    implementation, as a fake step that stands for a CUDA step needs."""
    extra = {"foreach": True} if foreach else {}
    if hasattr(model, "param_groups"):
        kwargs = dict(getattr(model, "default_optimizer_kwargs", {}))
        if lr is not None:
            kwargs["lr"] = lr
        return torch.optim.AdamW(model.param_groups(lr=lr, lr_backbone=lr_backbone), **kwargs, **extra)
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=DEFAULT_LR if lr is None else lr, weight_decay=DEFAULT_WEIGHT_DECAY, **extra)


def prime_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, only: set[int] | None = None) -> None:
    """Create what a first training step leaves behind, without running it: a zero gradient for
    every trainable parameter and AdamW's state (step, exp_avg, exp_avg_sq; max_exp_avg_sq with
    amsgrad) as torch.optim.Adam._init_group creates them. A step after this one sees the same
    live tensors as after a warm-up step, provided every trainable parameter gets a gradient
    (tests/predict check it per family). `only`: the ids of the parameters that get one (a source
    model's, found by predict/fake_policy.params_with_grad); None: every trainable parameter."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad or (only is not None and id(p) not in only):
                continue
            p.grad = torch.zeros_like(p)
            state = optimizer.state[p]
            if state:
                continue
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
