"""Raw detector outputs -> per-image scores, labels and absolute xyxy boxes.

`postprocess_softmax` is DETR's PostProcess (softmax over K+1 classes, best real class per
query, all queries kept). `postprocess_topk_sigmoid` is the Deformable/Conditional/DINO one
(sigmoid, top-k over queries x classes). `target_sizes` is a (B, 2) tensor of (h, w).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy, scale_boxes


def _check(outputs: dict, target_sizes: Tensor) -> None:
    if target_sizes.ndim != 2 or target_sizes.shape[1] != 2 or len(target_sizes) != len(outputs["pred_logits"]):
        raise ValueError(
            f"target_sizes must be a (B, 2) tensor of (h, w) with B = {len(outputs['pred_logits'])}; "
            f"got shape {tuple(target_sizes.shape)}"
        )


@torch.no_grad()
def postprocess_softmax(outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
    _check(outputs, target_sizes)
    prob = F.softmax(outputs["pred_logits"], -1)  # (B, Q, K+1)
    scores, labels = prob[..., :-1].max(-1)  # (B, Q)
    boxes = scale_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"]), target_sizes)  # (B, Q, 4)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]


@torch.no_grad()
def postprocess_topk_sigmoid(outputs: dict, target_sizes: Tensor, num_select: int = 100) -> list[dict[str, Tensor]]:
    _check(outputs, target_sizes)
    logits = outputs["pred_logits"]  # (B, Q, K)
    bs, num_queries, num_classes = logits.shape
    prob = logits.sigmoid().view(bs, -1)  # (B, Q*K)
    scores, flat_idx = torch.topk(prob, min(num_select, prob.shape[1]), dim=1)
    query_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
    labels = flat_idx % num_classes
    boxes = box_cxcywh_to_xyxy(outputs["pred_boxes"])
    boxes = torch.gather(boxes, 1, query_idx.unsqueeze(-1).expand(-1, -1, 4))
    boxes = scale_boxes(boxes, target_sizes)
    return [{"scores": s, "labels": l, "boxes": b} for s, l, b in zip(scores, labels, boxes)]
