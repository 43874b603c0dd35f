"""Shared helpers for detector tests: the tiny configurations, images and targets."""
from __future__ import annotations

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
