"""Hungarian matching of predictions to targets (scipy's linear_sum_assignment).

cost = cost_class * C_class + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy))

The class term is pluggable (`class_cost`): DETR's `softmax_class_cost` (-p[target class] of
the softmax over K+1 classes) or `FocalClassCost` (the sigmoid focal-loss cost of Deformable
DETR, Conditional DETR, DINO). DETR's defaults: cost_class 1, cost_bbox 5, cost_giou 2.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# (N, K) logits of N predictions, (M,) target class ids -> (N, M) cost
ClassCost = Callable[[Tensor, Tensor], Tensor]


def softmax_class_cost(logits: Tensor, target_ids: Tensor) -> Tensor:
    """DETR: -softmax(logits)[:, target]; the constant 1 of 1 - p is left out."""
    return -logits.softmax(-1)[:, target_ids]


class FocalClassCost:
    """Sigmoid focal-loss cost (Deformable DETR and successors): pos - neg at the target class."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, eps: float = 1e-8):
        self.alpha, self.gamma, self.eps = alpha, gamma, eps

    def __call__(self, logits: Tensor, target_ids: Tensor) -> Tensor:
        prob = logits.sigmoid()  # (N, K)
        neg = (1 - self.alpha) * prob**self.gamma * -(1 - prob + self.eps).log()
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + self.eps).log()
        return pos[:, target_ids] - neg[:, target_ids]


Indices = list[tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """outputs {"pred_logits" (B, Q, K), "pred_boxes" (B, Q, 4)} + targets -> per image
    (prediction indices, target indices), int64, each of length min(Q, n_targets)."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 class_cost: ClassCost = softmax_class_cost):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox, cost_giou must be non-zero")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.class_cost = class_cost

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> Tensor:
        """(B, Q, sum_i n_i) total cost, on CPU."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        logits = outputs["pred_logits"].flatten(0, 1)  # (B*Q, K)
        boxes = outputs["pred_boxes"].flatten(0, 1)  # (B*Q, 4)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(boxes.dtype)
        c_class = self.class_cost(logits, tgt_ids)
        c_bbox = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        total = self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou
        return total.view(bs, num_queries, -1).cpu()

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        cost = self.cost_matrix(outputs, targets)
        from scipy.optimize import linear_sum_assignment  # 0.4 s to import: only where a match is solved

        pairs = [linear_sum_assignment(c[i]) for i, c in enumerate(cost.split(sizes, -1))]
        return [(torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)) for i, j in pairs]
