"""Seeded synthetic batches: random normalised images and valid DETR-style targets.

Same (seed, index) -> the same batch, bit for bit. Images are uniform pixels in [0, 1)
normalised with the ImageNet mean/std (what the detectors expect). Targets carry 1..max_objects
boxes per image, normalised cxcywh, strictly inside the image (0 < x0 < x1 < 1, same for y).

Image sizes: a fixed (H, W), or the "coco" distribution: DETR's multi-scale training resize
(shorter side drawn from 480, 512, ..., 800, longer side capped at 1333) applied to an aspect
ratio drawn from a small table that approximates COCO train2017 (mostly 4:3 landscape, some
portrait and square). Inference uses DETR's evaluation resize (shorter side 800, cap 1333).
"""
from __future__ import annotations


import torch

from enact_bench.data.sources import Batch, register_data_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DETR_TRAIN_SCALES = tuple(range(480, 801, 32))  # 480 ... 800, as the released DETR
DETR_EVAL_SCALE = 800
DETR_MAX_SIZE = 1333
# (width / height, probability): an approximation of COCO train2017's aspect ratios.
COCO_ASPECTS = ((4 / 3, 0.55), (3 / 4, 0.17), (3 / 2, 0.10), (1.0, 0.08), (16 / 9, 0.05), (2 / 3, 0.05))

DEFAULT_MAX_OBJECTS = 20


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index))


def resize_shorter(h: float, w: float, shorter: int, max_size: int = DETR_MAX_SIZE) -> tuple[int, int]:
    """DETR's get_size_with_aspect_ratio: shorter side -> `shorter` unless the longer exceeds max."""
    lo, hi = min(h, w), max(h, w)
    if hi / lo * shorter > max_size:
        shorter = int(round(max_size * lo / hi))
    if h < w:
        return shorter, int(shorter * w / h)
    return int(shorter * h / w), shorter


def sample_coco_sizes(n: int, g: torch.Generator, train: bool = True) -> list[tuple[int, int]]:
    probs = torch.tensor([p for _, p in COCO_ASPECTS])
    picks = torch.multinomial(probs, n, replacement=True, generator=g).tolist()
    sizes = []
    for k in picks:
        aspect = COCO_ASPECTS[k][0]
        if train:
            shorter = DETR_TRAIN_SCALES[int(torch.randint(len(DETR_TRAIN_SCALES), (1,), generator=g))]
        else:
            shorter = DETR_EVAL_SCALE
        h, w = (480.0, 480.0 * aspect)  # a nominal source image with that aspect ratio
        sizes.append(resize_shorter(h, w, shorter))
    return sizes


def random_image(h: int, w: int, g: torch.Generator) -> torch.Tensor:
    img = torch.rand(3, h, w, generator=g)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (img - mean) / std  # (3, H, W)


def random_targets(n_obj: int, num_classes: int, g: torch.Generator) -> dict:
    """`n_obj` boxes strictly inside the unit square, as normalised cxcywh."""
    wh = 0.05 + 0.45 * torch.rand(n_obj, 2, generator=g)  # sides in [0.05, 0.5)
    slack = 1.0 - wh - 2e-3
    x0y0 = 1e-3 + slack * torch.rand(n_obj, 2, generator=g)  # x0 in [1e-3, 1 - w - 1e-3)
    centre = x0y0 + wh / 2
    boxes = torch.cat([centre, wh], dim=1)  # (n, 4) cxcywh
    labels = torch.randint(num_classes, (n_obj,), generator=g, dtype=torch.int64)
    return {"labels": labels, "boxes": boxes}


class SyntheticSource:
    def __init__(self, *, batch_size: int, num_classes: int, seed: int,
                 image_size: tuple[int, int] | None, size_dist: str | None, train: bool,
                 max_objects: int = DEFAULT_MAX_OBJECTS):
        if image_size is None and size_dist != "coco":
            raise ValueError("synthetic data needs image_size = [H, W] or the 'coco' size distribution")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.batch_size, self.num_classes, self.seed = batch_size, num_classes, seed
        self.image_size, self.size_dist, self.train = image_size, size_dist, train
        self.max_objects = max_objects

    def batch(self, index: int) -> Batch:
        g = _generator(self.seed, index)
        if self.image_size is not None:
            sizes = [tuple(self.image_size)] * self.batch_size
        else:
            sizes = sample_coco_sizes(self.batch_size, g, train=self.train)
        images, targets = [], []
        for i, (h, w) in enumerate(sizes):
            images.append(random_image(h, w, g))
            n_obj = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
            t = random_targets(n_obj, self.num_classes, g)
            t["image_id"] = torch.tensor(index * self.batch_size + i)
            t["orig_size"] = torch.tensor([h, w])
            t["size"] = torch.tensor([h, w])
            targets.append(t)
        return Batch(images=images, targets=targets, sizes=torch.tensor(sizes, dtype=torch.int64))


@register_data_source(
    "synthetic",
    options={"max_objects": f"int >= 1, most objects per image (default {DEFAULT_MAX_OBJECTS})"},
    description="seeded random images and boxes; fixed size or the 'coco' size distribution",
)
def make_synthetic(case) -> SyntheticSource:
    opts = dict(case.data_options)
    return SyntheticSource(
        batch_size=case.batch_size, num_classes=case.num_classes, seed=case.seed,
        image_size=case.image_size, size_dist=case.image_size_dist, train=case.mode == "train",
        max_objects=int(opts.get("max_objects", DEFAULT_MAX_OBJECTS)),
    )


__all__ = ["SyntheticSource", "make_synthetic", "random_targets", "random_image",
           "sample_coco_sizes", "resize_shorter"]
