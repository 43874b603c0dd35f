"""Data sources "coco" and "toy" for the harness (the "coco" evaluation hook that scores a model on
their val split is enact_bench.evaluate.coco_hook: data/ does not import measure/).

train mode: batches from train2017 through the originals' training transforms (seeded per batch
index, so the same index gives the same batch). infer mode: batches from val2017 through the
validation transform, post-processed in original image pixels.

"toy" is the same over a generated toy dataset (enact_bench.data.toy_coco): given ``root`` it is
read from there, otherwise generated once under the system's temp folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tempfile
from pathlib import Path

import torch

from enact_bench.data.coco import CocoDataError, CocoDetection, CocoPaths, resolve_coco_root
from enact_bench.data.sources import Batch, register_data_source

COMMON_OPTIONS = {
    "root": "path to the COCO-layout folder (coco: default $ENACT_BENCH_COCO; toy: default generated)",
    "max_images": "int >= 1: use the first N image ids of each split (sorted; deterministic)",
    "size_scale": "float > 0: multiplies the transforms' sizes (800/1333, 480..800, crops); 1.0 = DETR's",
    "contiguous_labels": "bool: class index = position of the sorted category id (default false: the "
                         "raw COCO id, DETR's num_classes=91)",
    "num_workers": "int >= 0: DataLoader workers for the evaluation pass (default 0)",
    "eval_train_steps": "int >= 0: training steps on the train split before the coco evaluation "
                        "(default 0; the toy suite uses it to get a non-trivial mAP)",
    "eval_lr": "float: learning rate (also the backbone's) for eval_train_steps (default: the detector's)",
}
TOY_OPTIONS = {
    "images": "int >= 2: images generated (train + val; default 48)",
    "toy_seed": "int: seed of the generated images (default 0)",
    "categories": "int 1..3: shape categories generated (default 3)",
    "min_side_px": "int: smallest generated image side (default 160)",
    "max_side_px": "int: largest generated image side (default 320)",
    "objects_per_image": "[lo, hi]: objects per generated image (default [1, 4])",
    "object_frac": "[lo, hi]: object extent / shorter image side (default [0.15, 0.45])",
}
TOY_CONFIG_KEYS = {"images": "images", "toy_seed": "seed", "categories": "categories",
                   "min_side_px": "min_side_px", "max_side_px": "max_side_px",
                   "objects_per_image": "objects_per_image", "object_frac": "object_frac"}
TOY_DEFAULT_SCALE = 0.2  # toy images are 160..320 px: shorter side 160, longer at most 267


def toy_root(options: dict) -> Path:
    """The toy dataset for these options, generated on first use (a marker file says it is whole)."""
    from enact_bench.data.toy_coco import ToyCocoConfig, make_toy_coco

    if options.get("root"):
        return Path(options["root"]).expanduser()
    kw = {field: options[key] for key, field in TOY_CONFIG_KEYS.items() if key in options}
    for key in ("objects_per_image", "object_frac"):
        if key in kw:
            kw[key] = tuple(kw[key])
    cfg = ToyCocoConfig(**kw)
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / "enact-bench-toy" / f"n{cfg.images}-s{cfg.seed}-{digest}"
    if not (root / ".complete").exists():
        make_toy_coco(root, cfg, overwrite=True)  # its own cache folder: a half-written one is redone
        (root / ".complete").write_text("ok\n")
    return root


def data_root(case) -> Path:
    opts = case.data_options
    if case.data == "toy":
        return toy_root(opts)
    return resolve_coco_root(opts.get("root"))


class CocoSource:
    """Batches of a COCO-layout dataset for one case (see the module docstring)."""

    def __init__(self, case):
        opts = dict(case.data_options)
        self.case = case
        self.root = data_root(case)
        default_scale = TOY_DEFAULT_SCALE if case.data == "toy" else 1.0
        self.kw = dict(size_scale=float(opts.get("size_scale", default_scale)),
                       max_images=opts.get("max_images"),
                       contiguous_labels=bool(opts.get("contiguous_labels", False)))
        self.num_workers = int(opts.get("num_workers", 0))
        self.eval_train_steps = int(opts.get("eval_train_steps", 0))
        self.eval_lr = opts.get("eval_lr")
        self._sets: dict[str, CocoDetection] = {}
        self.order: list[int] | None = None  # dataset indices in reading order (set by shard())
        ds = self.dataset("train" if case.mode == "train" else "val")
        if case.num_classes < ds.category_map.num_classes:
            raise ValueError(f"num_classes = {case.num_classes} is too small for {ds.paths.annotations}: "
                             f"its category ids need num_classes >= {ds.category_map.num_classes}")

    @property
    def record_fields(self) -> dict:
        """What the harness adds to the record's case: where the images came from."""
        split = "train" if self.case.mode == "train" else "val"
        return {"data_root": str(self.root), "annotation_file": str(self.dataset(split).paths.annotations),
                "data_images": len(self.dataset(split))}

    def dataset(self, split: str) -> CocoDetection:
        if split not in self._sets:
            self._sets[split] = CocoDetection(self.root, split, **self.kw)
        return self._sets[split]

    def shard(self, num_replicas: int, rank: int, seed: int = 0) -> "CocoSource":
        """Read only this rank's share, as the originals' DistributedSampler gives it (shuffled
        with the same seed on every rank, padded to equal length, rank r takes every
        num_replicas-th index from r)."""
        from torch.utils.data import DistributedSampler

        ds = self.dataset("train" if self.case.mode == "train" else "val")
        sampler = DistributedSampler(ds, num_replicas=num_replicas, rank=rank,
                                     shuffle=self.case.mode == "train", seed=seed)
        sampler.set_epoch(0)
        self.order = list(sampler)
        return self

    def batch(self, index: int) -> Batch:
        ds = self.dataset("train" if self.case.mode == "train" else "val")
        order = self.order if self.order is not None else range(len(ds))
        bs = self.case.batch_size
        start = (index % math.ceil(len(order) / bs)) * bs
        picks = [order[(start + i) % len(order)] for i in range(bs)]  # wraps so every batch is full
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.case.seed * 1_000_003 + index)  # the random transforms' draws
            items = [ds[i] for i in picks]
        images = [im for im, _ in items]
        targets = [t for _, t in items]
        sizes = torch.stack([t["orig_size"] for t in targets]).to(torch.int64)  # (B, 2) original (h, w)
        return Batch(images=images, targets=targets, sizes=sizes,
                     image_ids=[int(t["image_id"]) for t in targets])


def check_case_data(case) -> None:
    """Fail before any case runs when a COCO root or file is missing (message names the path)."""
    if case.data not in ("coco", "toy"):
        return
    if case.data == "toy" and not case.data_options.get("root"):
        return  # generated on first use
    root = data_root(case)
    CocoPaths.of(root, "train" if case.mode == "train" else "val")
    if "coco" in case.evaluate or (case.data_options.get("eval_train_steps") or 0) > 0:
        CocoPaths.of(root, "val")
    if (case.data_options.get("eval_train_steps") or 0) > 0:
        CocoPaths.of(root, "train")


@register_data_source("coco", options=COMMON_OPTIONS,
                      description="COCO 2017 (train2017 with DETR's training transforms / val2017)")
def make_coco(case) -> CocoSource:
    return CocoSource(case)


@register_data_source("toy", options={**COMMON_OPTIONS, **TOY_OPTIONS},
                      description="generated shapes in the COCO layout (enact-bench make-toy-coco)")
def make_toy(case) -> CocoSource:
    return CocoSource(case)


__all__ = ["CocoSource", "check_case_data", "toy_root", "CocoDataError"]
