"""Model class index <-> COCO category id.

DETR-family releases train with ``num_classes = 91`` and use the raw COCO category id as the class
index (ids 1..90, with gaps; index 91 is "no object"). Other codebases map the sorted category ids
to 0..K-1. Both are offered; the raw mapping is the default because the released checkpoints need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class CategoryMap:
    """category_ids: the dataset's category ids; contiguous: map them to 0..K-1 in sorted order."""

    category_ids: tuple[int, ...]
    contiguous: bool = False

    def __post_init__(self):
        ids = tuple(int(c) for c in self.category_ids)
        if not ids:
            raise ValueError("CategoryMap needs at least one category id (the annotation file lists none)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"CategoryMap: duplicate category ids in {ids}")
        if min(ids) < 0:
            raise ValueError(f"CategoryMap: category ids must be >= 0, got {min(ids)}")
        object.__setattr__(self, "category_ids", tuple(sorted(ids)))

    @classmethod
    def from_coco(cls, coco, contiguous: bool = False) -> "CategoryMap":
        """From a pycocotools COCO object (its ``getCatIds()``)."""
        return cls(tuple(coco.getCatIds()), contiguous)

    @property
    def num_classes(self) -> int:
        """What to pass as the detector's num_classes (91 for COCO in the raw mapping)."""
        return len(self.category_ids) if self.contiguous else max(self.category_ids) + 1

    def label_of(self, category_id: int) -> int:
        category_id = int(category_id)
        if category_id not in self._index:
            raise KeyError(f"category id {category_id} is not one of {self.category_ids}")
        return self._index[category_id] if self.contiguous else category_id

    def category_of(self, label: int) -> int:
        """The COCO category id of a model class index (raw mapping: the index itself)."""
        label = int(label)
        if self.contiguous:
            if not 0 <= label < len(self.category_ids):
                raise KeyError(f"class index {label} outside 0..{len(self.category_ids) - 1}")
            return self.category_ids[label]
        return label

    def labels_of(self, category_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.label_of(c) for c in category_ids.tolist()], dtype=torch.int64)

    def categories_of(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self.category_of(c) for c in labels.tolist()], dtype=torch.int64)

    @cached_property
    def _index(self) -> dict[int, int]:
        return {c: i for i, c in enumerate(self.category_ids)}
