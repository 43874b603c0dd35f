"""Batches of differently sized images: zero padding at the bottom/right plus a padding mask.

The mask convention is DETR's: True marks padding, False marks image pixels. Every detector
accepts either a list of (3, H_i, W_i) tensors or an already padded (B, 3, H, W) batch with its
(B, H, W) mask; `batch_images` turns both into the padded form.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_image_list(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(3, H_i, W_i) tensors -> padded batch (B, 3, H_max, W_max) and mask (B, H_max, W_max)."""
    if len(images) == 0:
        raise ValueError("expected at least one image, got an empty list")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.ndim != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i}: expected a (C, H, W) tensor, got {shape}")
    channels = images[0].shape[0]
    if any(img.shape[0] != channels for img in images):
        raise ValueError(f"all images need the same channel count; got {[img.shape[0] for img in images]}")
    h_max = max(img.shape[1] for img in images)
    w_max = max(img.shape[2] for img in images)
    first = images[0]
    batch = first.new_zeros((len(images), channels, h_max, w_max))
    mask = torch.ones((len(images), h_max, w_max), dtype=torch.bool, device=first.device)
    for img, slot, m in zip(images, batch, mask):
        h, w = img.shape[1:]
        slot[:, :h, :w].copy_(img)
        m[:h, :w] = False
    return batch, mask


def batch_images(images: Tensor | Sequence[Tensor], mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Accept a list of images or a padded batch (+ optional mask) and return (batch, mask).

    A (B, 3, H, W) tensor without a mask means that no pixel is padding (what the original DETR
    does when given a plain tensor).
    """
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise ValueError(f"a tensor input must be a padded batch (B, C, H, W); got shape {tuple(images.shape)}")
        if mask is None:
            mask = torch.zeros((images.shape[0], *images.shape[2:]), dtype=torch.bool, device=images.device)
        elif mask.shape != (images.shape[0], *images.shape[2:]) or mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be a bool tensor of shape (B, H, W) = {(images.shape[0], *images.shape[2:])} "
                f"(True = padding); got {mask.dtype} {tuple(mask.shape)}"
            )
        return images, mask
    if mask is not None:
        raise ValueError("pass `mask` only with a padded batch tensor; a list of images builds its own mask")
    return pad_image_list(list(images))


def downsample_mask(mask: Tensor, size: Sequence[int]) -> Tensor:
    """(B, H, W) bool padding mask -> (B, h, w) by nearest interpolation, as the original backbones do."""
    # (B, H, W) -> (1, B, H, W) float -> (1, B, h, w) -> (B, h, w) bool
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


def image_sizes(mask: Tensor) -> Tensor:
    """(B, H, W) padding mask -> (B, 2) int64 (h, w) of each image's valid region (top-left anchored)."""
    valid = ~mask
    h = valid.any(dim=2).sum(dim=1)
    w = valid.any(dim=1).sum(dim=1)
    return torch.stack([h, w], dim=1)
