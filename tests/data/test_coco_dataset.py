import json
import shutil

import pytest
import torch
from torchvision.ops import box_convert

from enact_bench.data.coco import (CocoDataError, CocoDetection, collate_detection, make_loader,
                                   resolve_coco_root)
from enact_bench.data.coco_transforms import (DetrResize, RandomSizeCrop, detr_resize_hw, finalize,
                                              make_coco_transforms, make_sample)


def test_detr_resize_sizes():
    # COCO-like images at the originals' val setting (800, max 1333).
    assert detr_resize_hw(480, 640, 800, 1333) == (800, 1066)
    assert detr_resize_hw(427, 640, 800, 1333) == (800, 1199)
    assert detr_resize_hw(640, 427, 800, 1333) == (1199, 800)
    # A wide image: the long side caps the short side at round(1333 * 300 / 1000) = 400.
    assert detr_resize_hw(300, 1000, 800, 1333) == (400, 1333)
    assert detr_resize_hw(800, 900, 800, 1333) == (800, 900)


def test_val_item_matches_annotations(toy_root):
    ds = CocoDetection(toy_root, "val", size_scale=0.2)  # shorter side 160, max 267
    anns = json.loads((toy_root / "annotations" / "instances_val2017.json").read_text())
    image, target = ds[0]
    info = next(i for i in anns["images"] if i["id"] == ds.ids[0])
    h, w = info["height"], info["width"]
    assert target["orig_size"].tolist() == [h, w]
    assert list(image.shape[1:]) == target["size"].tolist() == list(detr_resize_hw(h, w, 160, 267))
    assert abs(float(image.mean())) < 3  # normalised
    # Coordinates survive the resize: normalised cxcywh -> original pixels = the annotation's box.
    mine = [a for a in anns["annotations"] if a["image_id"] == ds.ids[0]]
    boxes = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
    expected = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                              a["bbox"][1] + a["bbox"][3]] for a in mine], dtype=torch.float32)
    torch.testing.assert_close(boxes, expected, atol=1e-3, rtol=0)
    assert target["labels"].tolist() == [a["category_id"] for a in mine]  # raw ids, as DETR


def test_crowd_and_degenerate_boxes_dropped(toy_root, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(toy_root, root)
    path = root / "annotations" / "instances_val2017.json"
    doc = json.loads(path.read_text())
    img = doc["images"][0]
    n_before = sum(a["image_id"] == img["id"] for a in doc["annotations"])
    extra = dict(image_id=img["id"], category_id=1, area=10.0, segmentation=[])
    doc["annotations"] += [dict(extra, id=900, bbox=[5, 5, 20, 20], iscrowd=1),       # crowd
                           dict(extra, id=901, bbox=[img["width"] + 5, 2, 9, 9], iscrowd=0),  # outside
                           dict(extra, id=902, bbox=[-10, 3, 30, 15], iscrowd=0)]     # clamped at 0
    path.write_text(json.dumps(doc))
    ds = CocoDetection(root, "val", transforms=None, max_images=1)
    _, target = ds[0]
    assert len(target["labels"]) == n_before + 1
    clamped = box_convert(target["boxes"][-1:], "cxcywh", "xyxy") * torch.tensor(
        [img["width"], img["height"]] * 2)
    torch.testing.assert_close(clamped, torch.tensor([[0.0, 3.0, 20.0, 18.0]]))


def test_contiguous_labels_option(toy_root):
    ds = CocoDetection(toy_root, "val", transforms=None, contiguous_labels=True)
    raw = CocoDetection(toy_root, "val", transforms=None)
    assert ds.category_map.num_classes == 3 and raw.category_map.num_classes == 4
    assert (ds[1][1]["labels"] + 1).tolist() == raw[1][1]["labels"].tolist()


def test_train_transforms_keep_boxes_valid_and_are_seeded(toy_root):
    ds = CocoDetection(toy_root, "train", size_scale=0.2)
    torch.manual_seed(0)
    first = [ds[i] for i in range(len(ds))]
    torch.manual_seed(0)
    again = [ds[i] for i in range(len(ds))]
    for (img, t), (img2, t2) in zip(first, again):
        assert torch.equal(img, img2) and torch.equal(t["boxes"], t2["boxes"])
        b = t["boxes"]
        assert ((b > 0) & (b <= 1)).all() and len(b) == len(t["labels"])
        assert max(img.shape[1:]) <= 267 and min(img.shape[1:]) <= 160  # scales 96..160, max 267


def test_random_size_crop_shifts_clamps_and_drops():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0], [150.0, 60.0, 190.0, 90.0]])
    sample = make_sample(image, boxes, labels=torch.tensor([1, 2]))
    crop = RandomSizeCrop(60, 60)
    torch.manual_seed(0)
    params = crop.make_params([sample[0]])
    torch.manual_seed(0)
    img, t = crop(*sample)
    assert tuple(img.shape[1:]) == (60, 60)
    top, left = params["top"], params["left"]
    img2, t2 = finalize(img, t)
    expect = (boxes - torch.tensor([left, top, left, top])).clamp(min=0).clamp(max=60)
    keep = (expect[:, 2] > expect[:, 0]) & (expect[:, 3] > expect[:, 1])
    assert t2["labels"].tolist() == [lab for lab, k in zip([1, 2], keep.tolist()) if k]
    torch.testing.assert_close(box_convert(t2["boxes"], "cxcywh", "xyxy") * 60, expect[keep])


def test_hflip_mirrors_boxes():
    image = torch.zeros(3, 50, 100, dtype=torch.uint8)
    from torchvision.transforms import v2
    img, t = v2.RandomHorizontalFlip(p=1.0)(*make_sample(image, torch.tensor([[10.0, 5.0, 30.0, 25.0]])))
    assert t["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0]]


def test_max_images_is_a_deterministic_prefix_and_loader_keeps_lists(toy_root):
    ds = CocoDetection(toy_root, "train", size_scale=0.2, max_images=4)
    assert ds.ids == sorted(ds.coco.imgs)[:4]
    images, targets = next(iter(make_loader(ds, batch_size=3, shuffle=True, seed=1)))
    assert len(images) == 3 and len(targets) == 3 and all(i.dim() == 3 for i in images)
    order = lambda: [int(t["image_id"]) for b in make_loader(ds, 2, shuffle=True, seed=5) for t in b[1]]
    assert order() == order()
    images, targets = collate_detection([ds[0], ds[1]])
    assert isinstance(images, list)


def test_missing_paths_name_what_was_expected(toy_root, tmp_path, monkeypatch):
    monkeypatch.delenv("ENACT_BENCH_COCO", raising=False)
    with pytest.raises(CocoDataError, match="--coco-root DIR or set ENACT_BENCH_COCO"):
        resolve_coco_root(None)
    with pytest.raises(CocoDataError, match=str(tmp_path / "nope")):
        resolve_coco_root(tmp_path / "nope")
    monkeypatch.setenv("ENACT_BENCH_COCO", str(toy_root))
    assert resolve_coco_root(None) == toy_root
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CocoDataError, match=str(empty / "annotations" / "instances_val2017.json")):
        CocoDetection(empty, "val")
    root = tmp_path / "copy"
    shutil.copytree(toy_root, root)
    ds = CocoDetection(root, "val", transforms=None)
    victim = ds.image_path(ds.ids[0])
    victim.unlink()
    with pytest.raises(CocoDataError, match=str(victim)):
        ds[0]


def test_loader_workers_give_the_same_val_batches(toy_root):
    ds = CocoDetection(toy_root, "val", size_scale=0.2)
    plain = list(make_loader(ds, 2, num_workers=0))
    workers = list(make_loader(ds, 2, num_workers=1))
    assert len(plain) == len(workers) == 2  # 3 val images: a batch of 2 and one of 1
    for (ia, ta), (ib, tb) in zip(plain, workers):
        assert all(torch.equal(a, b) for a, b in zip(ia, ib))
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
