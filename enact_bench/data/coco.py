"""COCO 2017 detection data: layout, dataset, loader.

Layout under a root (``--coco-root`` or the ``ENACT_BENCH_COCO`` environment variable)::

    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json
    ROOT/train2017/*.jpg
    ROOT/val2017/*.jpg

Annotations are read with pycocotools. Crowd annotations are dropped and boxes clamped to the
image and dropped when empty, as DETR's ConvertCocoPolysToMask does; labels follow a CategoryMap
(raw COCO ids by default, as the DETR family trains with num_classes=91).
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from enact_bench.data.categories import CategoryMap
from enact_bench.data.coco_transforms import finalize, make_coco_transforms, make_sample

ENV_VAR = "ENACT_BENCH_COCO"
SPLITS = ("train", "val")


class CocoDataError(FileNotFoundError):
    """A COCO root, annotation file or image is missing; the message names the expected path."""


def resolve_coco_root(root: str | os.PathLike | None = None) -> Path:
    """The root given, else $ENACT_BENCH_COCO; an error that says how to set it otherwise."""
    value = root if root not in (None, "") else os.environ.get(ENV_VAR)
    if not value:
        raise CocoDataError(
            f"no COCO root: pass --coco-root DIR or set {ENV_VAR}=DIR, where DIR holds "
            "annotations/instances_{train,val}2017.json and {train,val}2017/*.jpg")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise CocoDataError(f"COCO root {path} does not exist (expected a directory with "
                            "annotations/ and train2017/, val2017/)")
    return path


@dataclass(frozen=True)
class CocoPaths:
    images: Path
    annotations: Path

    @classmethod
    def of(cls, root: str | os.PathLike, split: str) -> "CocoPaths":
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
        root = Path(root)
        paths = cls(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
        if not paths.annotations.is_file():
            raise CocoDataError(f"COCO annotation file not found: expected {paths.annotations}")
        if not paths.images.is_dir():
            raise CocoDataError(f"COCO image folder not found: expected {paths.images}")
        return paths


def load_coco(annotation_file: str | os.PathLike):
    """pycocotools COCO with its progress prints captured."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.is_file():
        raise CocoDataError(f"COCO annotation file not found: expected {path}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


class CocoDetection(Dataset):
    """(image, target) pairs: image normalised float (3, H, W); target as DETR's (see finalize).

    ``max_images`` keeps the first N image ids in ascending order (deterministic). ``transforms``
    is a v2 pipeline (``make_coco_transforms``) or None for the original size.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", *, transforms="default",
                 size_scale: float = 1.0, max_images: int | None = None,
                 contiguous_labels: bool = False):
        self.split = split
        self.paths = CocoPaths.of(root, split)
        self.coco = load_coco(self.paths.annotations)
        self.category_map = CategoryMap.from_coco(self.coco, contiguous_labels)
        ids = sorted(self.coco.imgs.keys())
        if max_images is not None:
            if max_images < 1:
                raise ValueError(f"max_images must be >= 1, got {max_images}")
            ids = ids[:max_images]
        self.ids = ids
        self.transforms = make_coco_transforms(split, size_scale) if transforms == "default" else transforms

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: int) -> Path:
        return self.paths.images / self.coco.imgs[image_id]["file_name"]

    def raw_target(self, image_id: int, h: int, w: int) -> tuple[torch.Tensor, dict]:
        """ConvertCocoPolysToMask without masks: xyxy pixel boxes (n, 4) and the other fields."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id]))
        anns = [a for a in anns if a.get("iscrowd", 0) == 0]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
        cats = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        fields = {
            "labels": self.category_map.labels_of(cats)[keep],
            "area": torch.tensor([float(a["area"]) for a in anns], dtype=torch.float32)[keep],
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.int64),
            "image_id": torch.tensor(image_id),
            "orig_size": torch.tensor([h, w]),
        }
        return boxes[keep], fields

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        path = self.image_path(image_id)
        if not path.is_file():
            raise CocoDataError(f"COCO image {image_id} not found: expected {path}")
        with Image.open(path) as pil:
            image = pil_to_tensor(pil.convert("RGB"))  # (3, H, W) uint8
        h, w = image.shape[-2:]
        boxes, fields = self.raw_target(image_id, h, w)
        sample = make_sample(image, boxes, **fields)
        if self.transforms is not None:
            sample = self.transforms(*sample)
        return finalize(*sample)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep differently sized images as a list (the detectors pad them with a mask)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def make_loader(dataset: Dataset, batch_size: int = 1, *, shuffle: bool = False, num_workers: int = 0,
                seed: int = 0) -> DataLoader:
    """A DataLoader with the list-keeping collate; the same seed gives the same order."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_detection, generator=generator,
                      persistent_workers=False, drop_last=False)
