"""COCO bbox mAP with pycocotools, and the conversion of detector outputs to COCO results.

``evaluate_detections`` returns COCOeval's 12 bbox statistics by name. pycocotools writes -1 for a
statistic with no ground truth in its range (e.g. no small objects); those come back as None.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Iterable, Sequence

import torch

STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
TOP_K = 100  # detections kept per image, as the originals' evaluation (COCOeval's maxDets=100)


def _as_coco(annotations):
    from pycocotools.coco import COCO

    if isinstance(annotations, COCO):
        return annotations
    if isinstance(annotations, dict):
        coco = COCO()
        coco.dataset = copy.deepcopy(annotations)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco
    from enact_bench.data.coco import load_coco

    return load_coco(os.fspath(annotations))


def _empty_results(coco_gt):
    """A result set with no detections (COCO.loadRes refuses an empty list)."""
    from pycocotools.coco import COCO

    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                   "categories": copy.deepcopy(coco_gt.dataset.get("categories", []))}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def evaluate_detections(annotations, detections: Sequence[dict], image_ids: Iterable[int] | None = None,
                        ) -> dict[str, float | None]:
    """The 12 COCOeval bbox stats by name.

    annotations: an instances_*.json path, a pycocotools COCO, or the annotation dict.
    detections: COCO result dicts {image_id, category_id, bbox [x, y, w, h] in original pixels, score}.
    image_ids: evaluate these images only (e.g. a --max-images subset); default all in the file.
    Empty detections give 0 for every statistic that has ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = _as_coco(annotations)
    detections = list(detections)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections)) if detections else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (None if value < 0 else float(value)) for name, value in zip(STAT_NAMES, evaluator.stats)}


def to_coco_results(outputs: Sequence[dict], image_ids: Sequence[int], category_of=None,
                    top_k: int = TOP_K) -> list[dict]:
    """Detector postprocess outputs -> COCO result dicts.

    outputs: per image {scores (N,), labels (N,) model class index, boxes (N, 4) absolute xyxy in the
    original image's pixels}. category_of: class index -> COCO category id (a CategoryMap's
    ``category_of``; default the identity, DETR's raw ids). Keeps the ``top_k`` highest scores.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    category_of = category_of or int
    results = []
    for out, image_id in zip(outputs, image_ids):
        scores = out["scores"].detach().float().cpu()
        order = torch.argsort(scores, descending=True, stable=True)[:top_k]
        boxes = out["boxes"].detach().float().cpu()[order]  # (k, 4) xyxy
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        for s, l, b in zip(scores[order].tolist(), out["labels"].cpu()[order].tolist(), xywh.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(category_of(l)),
                            "bbox": [float(v) for v in b], "score": float(s)})
    return results


__all__ = ["STAT_NAMES", "TOP_K", "evaluate_detections", "to_coco_results"]
