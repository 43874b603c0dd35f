"""Run a detector over a COCO dataset and score it: predictions in original pixels, COCO ids, mAP."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from enact_bench.evaluate.coco_eval import evaluate_detections, to_coco_results


@dataclass
class Evaluation:
    stats: dict[str, float | None]
    image_ids: list[int]
    detections: int
    batch_ms: list[float] = field(default_factory=list)  # forward + postprocess per batch


@torch.no_grad()
def predict(model, loader, category_of=None, device: str | torch.device = "cpu",
            ) -> tuple[list[dict], list[int], list[float]]:
    """COCO result dicts for every image of ``loader`` (a make_loader over a CocoDetection).

    Boxes go back to the original image through ``orig_size``: the model predicts normalised cxcywh
    in the resized image, which is the same fraction of the original image (resize keeps ratios).
    """
    model.eval()
    device = torch.device(device)
    results, image_ids, batch_ms = [], [], []
    for images, targets in loader:
        images = [im.to(device) for im in images]
        sizes = torch.stack([t["orig_size"] for t in targets]).to(device)  # (B, 2) (h, w)
        ids = [int(t["image_id"]) for t in targets]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        outputs = model.postprocess(model(images), sizes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        batch_ms.append((time.perf_counter() - start) * 1e3)
        results += to_coco_results(outputs, ids, category_of)
        image_ids += ids
    return results, image_ids, batch_ms


def evaluate_model(model, dataset, loader, device: str | torch.device = "cpu") -> Evaluation:
    """mAP of ``model`` on ``dataset`` (a CocoDetection) over the images that ``loader`` yields."""
    results, ids, batch_ms = predict(model, loader, dataset.category_map.category_of, device)
    stats = evaluate_detections(dataset.coco, results, image_ids=ids)
    return Evaluation(stats, ids, len(results), batch_ms)
