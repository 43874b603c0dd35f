"""DETR's COCO transforms (datasets/transforms.py, make_coco_transforms) on torchvision.transforms.v2.

A sample is ``(image, target)``: image a ``tv_tensors.Image`` (uint8, (3, H, W)), target a dict with
``boxes`` a ``tv_tensors.BoundingBoxes`` (XYXY, absolute pixels) and plain tensors (labels, area,
iscrowd, image_id, orig_size) that the v2 transforms pass through. ``finalize`` then does what
DETR's ToTensor + Normalize do: float image normalised with ImageNet statistics, boxes as cxcywh
divided by the image's (w, h), degenerate boxes dropped, ``size`` set to the final (h, w).

``size_scale`` multiplies every size (800, 1333, 480..800, 400/500/600, 384..600): 1.0 is the
originals; the toy dataset uses smaller values so CPU runs stay cheap.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from enact_bench.data.augmentation_sizes import (CROP_MAX, CROP_MIN, MAX_SIZE, PRE_CROP_SIZES,  # noqa: F401
                                                TRAIN_SCALES, VAL_SIZE, detr_resize_hw)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DetrResize(v2.Transform):
    """RandomResize(sizes, max_size): one shorter-side size drawn uniformly per sample."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        super().__init__()
        if not sizes:
            raise ValueError("DetrResize needs at least one size")
        self.sizes = [int(s) for s in sizes]
        self.max_size = None if max_size is None else int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"hw": detr_resize_hw(h, w, size, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, size=list(params["hw"]), antialias=True)


class RandomSizeCrop(v2.Transform):
    """DETR's RandomSizeCrop(min, max): crop w in [min, min(W, max)], h likewise, at a random place.

    The original raises when the image is smaller than ``min_size``; here the crop is then the whole
    side. Boxes are shifted and clamped by v2's crop; empty ones are dropped in ``finalize``.
    """

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        cw = _randint(min(self.min_size, w), min(w, self.max_size))
        ch = _randint(min(self.min_size, h), min(h, self.max_size))
        return {"top": _randint(0, h - ch), "left": _randint(0, w - cw), "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high], both included, from torch's generator."""
    return int(torch.randint(low, high + 1, ()))


def _scaled(sizes: Sequence[int], scale: float) -> list[int]:
    return [max(1, int(round(s * scale))) for s in sizes]


def make_coco_transforms(split: str, size_scale: float = 1.0) -> v2.Compose:
    """The originals' pipelines (before normalisation; see ``finalize``).

    train: random horizontal flip, then with p=0.5 either a multi-scale resize (480..800 step 32,
    max 1333) or resize to 400/500/600 + RandomSizeCrop(384, 600) + the multi-scale resize.
    val: shorter side 800, longer side at most 1333.
    """
    if size_scale <= 0:
        raise ValueError(f"size_scale must be > 0, got {size_scale}")
    max_size = _scaled([MAX_SIZE], size_scale)[0]
    if split == "train":
        scales = _scaled(TRAIN_SCALES, size_scale)
        crop_min, crop_max = _scaled([CROP_MIN, CROP_MAX], size_scale)
        return v2.Compose([
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomChoice([
                DetrResize(scales, max_size),
                v2.Compose([
                    DetrResize(_scaled(PRE_CROP_SIZES, size_scale)),
                    RandomSizeCrop(crop_min, crop_max),
                    DetrResize(scales, max_size),
                ]),
            ]),
        ])
    if split == "val":
        return v2.Compose([DetrResize(_scaled([VAL_SIZE], size_scale), max_size)])
    raise ValueError(f"unknown split {split!r}: expected 'train' or 'val'")


def finalize(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """uint8 image + XYXY pixel boxes -> normalised float image + DETR targets (cxcywh in [0, 1])."""
    h, w = image.shape[-2:]
    out = F.normalize(F.to_dtype(image, torch.float32, scale=True), IMAGENET_MEAN, IMAGENET_STD)
    target = dict(target)
    boxes = target["boxes"].as_subclass(torch.Tensor).reshape(-1, 4)  # (n, 4) xyxy pixels
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for key in ("labels", "area", "iscrowd"):
        if key in target:
            target[key] = target[key][keep]
    boxes = boxes[keep]
    cxcywh = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                          boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=-1)
    target["boxes"] = cxcywh / torch.tensor([w, h, w, h], dtype=torch.float32)
    target["size"] = torch.tensor([h, w])
    return out.as_subclass(torch.Tensor), target


def make_sample(image: torch.Tensor, boxes_xyxy: torch.Tensor, **fields) -> tuple[tv_tensors.Image, dict]:
    """Wrap a uint8 (3, H, W) image and its XYXY pixel boxes for the v2 pipeline."""
    h, w = image.shape[-2:]
    target = {"boxes": tv_tensors.BoundingBoxes(boxes_xyxy.reshape(-1, 4).float(), format="XYXY",
                                                canvas_size=(h, w)), **fields}
    return tv_tensors.Image(image), target
