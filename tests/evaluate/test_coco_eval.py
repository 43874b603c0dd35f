import contextlib
import copy
import io
import json

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from enact_bench.data.categories import CategoryMap
from enact_bench.data.toy_coco import make_toy_coco
from enact_bench.evaluate import STAT_NAMES, evaluate_detections, to_coco_results


@pytest.fixture(scope="module")
def toy_val(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_eval")
    make_toy_coco(root, images=16, seed=7, min_side_px=96, max_side_px=160)
    return root / "annotations" / "instances_val2017.json"


def _gt_as_detections(ann_file):
    doc = json.loads(ann_file.read_text())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]),
             "score": 1.0} for a in doc["annotations"]]


def test_ground_truth_fed_back_scores_one(toy_val):
    stats = evaluate_detections(toy_val, _gt_as_detections(toy_val))
    assert list(stats) == list(STAT_NAMES)
    assert stats["map"] == 1.0 and stats["map_50"] == 1.0 and stats["mar_100"] == 1.0


def test_perturbation_matches_pycocotools_directly(toy_val):
    dets = _gt_as_detections(toy_val)
    g = torch.Generator().manual_seed(0)
    for i, d in enumerate(dets):
        shift = (torch.rand(4, generator=g) - 0.5) * 0.4 * torch.tensor(d["bbox"][2:] * 2)
        d["bbox"] = [float(v) for v in torch.tensor(d["bbox"], dtype=torch.float32) + shift]
        d["score"] = float(torch.rand((), generator=g))
        if i % 3 == 0:
            d["category_id"] = d["category_id"] % 3 + 1  # wrong class
    mine = evaluate_detections(toy_val, dets)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(toy_val))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    expected = [None if v < 0 else float(v) for v in ev.stats]
    assert [mine[k] for k in STAT_NAMES] == expected
    assert 0.05 < mine["map"] < 0.95


def _one_box_dataset(area):
    return {"images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [50, 50, 100, 100],
                             "area": area, "iscrowd": 0}],
            "categories": [{"id": 5, "name": "thing"}]}


def test_known_iou_gives_known_ap():
    # Detection shifted 20 px right: IoU = 80*100 / (120*100) = 0.667 -> matched at the IoU
    # thresholds 0.50, 0.55, 0.60, 0.65 and not above: AP = 4 / 10.
    det = [{"image_id": 1, "category_id": 5, "bbox": [70, 50, 100, 100], "score": 0.9}]
    stats = evaluate_detections(_one_box_dataset(10000.0), det)
    assert stats["map"] == pytest.approx(0.4)
    assert stats["map_50"] == pytest.approx(1.0) and stats["map_75"] == 0.0
    assert stats["map_large"] == pytest.approx(0.4)
    assert stats["map_small"] is None and stats["mar_medium"] is None  # no GT there (pycocotools' -1)


def test_empty_detections_give_zeros(toy_val):
    stats = evaluate_detections(toy_val, [])
    assert stats["map"] == 0.0 and stats["mar_100"] == 0.0 and stats["map_50"] == 0.0
    assert set(v for v in stats.values() if v is not None) == {0.0}


def test_image_subset_restricts_the_evaluation(toy_val):
    dets = _gt_as_detections(toy_val)
    first = min(d["image_id"] for d in dets)
    only_first = [d for d in dets if d["image_id"] == first]
    assert evaluate_detections(toy_val, only_first, image_ids=[first])["map"] == 1.0
    assert evaluate_detections(toy_val, only_first)["mar_100"] < 1.0


def test_no_printing(toy_val, capsys):
    evaluate_detections(toy_val, _gt_as_detections(toy_val))
    assert capsys.readouterr().out == ""


def test_to_coco_results_converts_boxes_ids_and_keeps_top_100():
    cmap = CategoryMap((1, 3, 7), contiguous=True)
    scores = torch.linspace(0.0, 1.0, 150)
    out = {"scores": scores, "labels": torch.arange(150) % 3,
           "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]).repeat(150, 1)}
    res = to_coco_results([out], [42], cmap.category_of)
    assert len(res) == 100
    assert res[0]["score"] == pytest.approx(1.0) and min(r["score"] for r in res) == pytest.approx(50 / 149)
    # The best box is index 149: class index 149 % 3 = 2 -> category 7; xyxy -> xywh.
    assert res[0] == {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 1.0}
    assert {r["category_id"] for r in res} == {1, 3, 7}
    raw = to_coco_results([out], [42])  # DETR's raw ids: class index = category id
    assert {r["category_id"] for r in raw} == {0, 1, 2}
