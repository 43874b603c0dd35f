"""Synthetic batches: seeded, normalised, boxes strictly inside, DETR-like size distribution."""
from __future__ import annotations

import torch

from enact_bench.data.synthetic import (DETR_MAX_SIZE, DETR_TRAIN_SCALES, SyntheticSource, resize_shorter,
                                        sample_coco_sizes)


def _src(**kw):
    args = dict(batch_size=3, num_classes=91, seed=7, image_size=(64, 96), size_dist=None, train=True)
    args.update(kw)
    return SyntheticSource(**args)


def test_same_seed_same_batch_other_seed_other_batch():
    a, b, c = _src().batch(2), _src().batch(2), _src(seed=8).batch(2)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(a.targets, b.targets))
    assert not torch.equal(a.images[0], c.images[0])
    assert not torch.equal(_src().batch(3).images[0], a.images[0])  # another index, another batch


def test_images_are_normalised_and_targets_valid():
    batch = _src(batch_size=4, max_objects=30).batch(0)
    assert [tuple(im.shape) for im in batch.images] == [(3, 64, 96)] * 4
    assert batch.sizes.tolist() == [[64, 96]] * 4
    pixels = torch.stack(batch.images)
    # uniform [0,1) pixels normalised with ImageNet mean/std: channel 0 spans (0-0.485)/0.229 .. (1-0.485)/0.229
    assert pixels[:, 0].min() >= -0.485 / 0.229 - 1e-5 and pixels[:, 0].max() < 0.515 / 0.229
    for t in batch.targets:
        n = len(t["labels"])
        assert 1 <= n <= 30 and t["labels"].dtype == torch.int64
        assert t["labels"].min() >= 0 and t["labels"].max() < 91
        cx, cy, w, h = t["boxes"].unbind(-1)
        assert (w > 0).all() and (h > 0).all()
        assert (cx - w / 2 > 0).all() and (cx + w / 2 < 1).all()  # strictly inside
        assert (cy - h / 2 > 0).all() and (cy + h / 2 < 1).all()


def test_resize_shorter_matches_detr():
    assert resize_shorter(480, 640, 800) == (800, 1066)  # 4:3 landscape
    assert resize_shorter(480, 1280, 800)[1] <= DETR_MAX_SIZE  # capped long side


def test_coco_distribution_uses_detr_scales():
    g = torch.Generator().manual_seed(0)
    sizes = sample_coco_sizes(200, g, train=True)
    for h, w in sizes:
        assert max(h, w) <= DETR_MAX_SIZE
        assert min(h, w) in DETR_TRAIN_SCALES or max(h, w) >= DETR_MAX_SIZE - 1
    assert len(set(sizes)) > 10
    batch = _src(image_size=None, size_dist="coco", train=False, batch_size=2).batch(0)
    assert all(min(im.shape[1:]) == 800 or max(im.shape[1:]) >= DETR_MAX_SIZE - 1 for im in batch.images)
