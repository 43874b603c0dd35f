"""ModelSpec: what a factory (`py:PKG.MODULE:FACTORY`, `PATH/TO/FILE.py:FACTORY`) may return besides
a bare nn.Module, for a model whose convention is not HF transformers' (docs/own-model.md).

A factory returns either

- an `nn.Module` in HF's convention: `forward(pixel_values, pixel_mask=None, labels=None)` returns
  an output with `.loss` when labels are given (an object with the attribute, or a dict with the
  key), and `.logits` / `.pred_boxes` for inference; or
- a `ModelSpec(model=..., loss_fn=..., ...)`: the fields below say how to call the model and
  compute its loss. Everything not given follows HF's convention and the DETR recipe.

Batches: `pixel_values` (B, 3, H, W) float, `pixel_mask` (B, H, W) int64 (1 = image, 0 = padding),
targets a list of per-image dicts `{"labels": int64 (n,), "boxes": float (n, 4) normalised cx, cy, w, h}`
(HF's labels rename "labels" to "class_labels").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """model: the nn.Module to train.
    loss_fn(outputs, targets) -> 0-dim loss tensor; None: the output's `.loss` (HF's convention,
        the model computing its loss from `labels`).
    make_batch(pixel_values, pixel_mask, targets) -> dict of keyword arguments for `model(**kw)`;
        targets is None in inference. None: {"pixel_values", "pixel_mask", "labels"} with labels
        in HF's form ({"class_labels", "boxes"}) in training.
    param_groups(model) -> AdamW parameter groups (dicts with "params" and optionally "lr",
        "weight_decay"); None: parameters named "*backbone*" at lr_backbone, the rest at lr.
    lr, lr_backbone, weight_decay: AdamW's settings (DETR's recipe by default).
    clip_max_norm: gradient clipping (None or 0: none).
    size_multiple: image sides the model needs to be a multiple of (requested sizes round up).
    enact_where(name, module) -> bool: the modules ENACT replaces (enact.patch's `where`); None:
        modules named "...encoder...self_attn".
    notes: lines shown with the model's plan rows (what it trains that a reader should know).
    """

    model: nn.Module
    loss_fn: Callable[[Any, list], Any] | None = None
    make_batch: Callable[..., dict] | None = None
    param_groups: Callable[[nn.Module], list] | None = None
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    clip_max_norm: float | None = 0.1
    size_multiple: int = 1
    enact_where: Callable[[str, nn.Module], bool] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"ModelSpec.model must be an nn.Module, got {type(self.model).__name__}")
        for name in ("loss_fn", "make_batch", "param_groups", "enact_where"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"ModelSpec.{name} must be callable or None, got {type(value).__name__}")
        for name in ("lr", "lr_backbone", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"ModelSpec.{name} must be a number >= 0, got {value!r}")
        if self.clip_max_norm is not None and (isinstance(self.clip_max_norm, bool) or self.clip_max_norm < 0):
            raise ValueError(f"ModelSpec.clip_max_norm must be None or >= 0, got {self.clip_max_norm!r}")
        if isinstance(self.size_multiple, bool) or not isinstance(self.size_multiple, int) or self.size_multiple < 1:
            raise ValueError(f"ModelSpec.size_multiple must be an int >= 1, got {self.size_multiple!r}")
        if isinstance(self.notes, str):
            object.__setattr__(self, "notes", (self.notes,))
