"""Shared helpers for detector tests: the tiny configurations, images and targets."""
from __future__ import annotations

import math

import pytest
import torch

from enact_bench.detectors import list_detectors

TINY = list_detectors(tiny=True)
# tests written for DETR's interfaces (dense encoder attention, transformer(src, mask, query, pos), softmax postprocess)
TINY_DETR = list_detectors(tiny=True, family="detr")
ENACT_PARAM = pytest.param(True, id="enact")  # enact/ is in the tree: an import failure is a failure
VARIANTS = [pytest.param(False, id="base"), ENACT_PARAM]

# mixed sizes, small: each image is one of the contract's "list of differently sized images"
SIZES = [(96, 128), (80, 112), (112, 96)]


def images(seed: int = 0, sizes=SIZES) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g) for h, w in sizes]


def targets(num_classes: int = 91) -> list[dict]:
    """Fixed targets for the images of `images()`: normalised cxcywh boxes, class indices."""
    return [
        {"labels": torch.tensor([1, 17]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([5]), "boxes": torch.tensor([[0.5, 0.5, 0.6, 0.5]])},
        {"labels": torch.tensor([2, 3, 60 % num_classes]),
         "boxes": torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.6, 0.3, 0.3, 0.2], [0.5, 0.7, 0.4, 0.3]])},
    ]


def msda_direct(value, shapes, loc, attn):
    """Multi-scale deformable attention computed directly (the oracle of the op and of the
    reference path): sum over levels and points of weight * bilinear sample (align_corners=False, zeros outside),
    one query, head and channel at a time; also counts its multiply-adds as it does them."""
    n, _, m, d = value.shape
    _, lq, _, nl, p, _ = loc.shape
    out = torch.zeros(n, lq, m, d, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    macs = 0
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for pt in range(p):
                        x, y = loc[b, q, head, lvl, pt].tolist()
                        px, py = x * w - 0.5, y * h - 0.5
                        x0, y0 = math.floor(px), math.floor(py)
                        for c in range(d):
                            val = 0.0
                            for yy, wy in ((y0, y0 + 1 - py), (y0 + 1, py - y0)):
                                for xx, wx in ((x0, x0 + 1 - px), (x0 + 1, px - x0)):
                                    tap = img[c, yy, xx].item() if 0 <= yy < h and 0 <= xx < w else 0.0
                                    val += (wx * wy) * tap  # one multiply-add per tap
                                    macs += 1
                            out[b, q, head, c] += attn[b, q, head, lvl, pt].item() * val  # the weighted sum
                            macs += 1
    return out.flatten(2), macs
