"""The set criterion of DETR (Hungarian matching + per-pair losses), and its focal-loss variant.

SetCriterion(num_classes, matcher, weight_dict, eos_coef=0.1, losses=("labels", "boxes", "cardinality"))
  labels       cross-entropy over K+1 classes, the no-object class weighted by eos_coef;
               also logs `class_error` (100 - top-1 accuracy of matched queries, main output only)
  boxes        L1 on normalised cxcywh (`loss_bbox`) and 1 - GIoU (`loss_giou`), summed over
               matched pairs and divided by the number of target boxes (at least 1)
  cardinality  |#predictions that are not no-object - #targets| (logging only, no gradient)
Auxiliary decoder outputs (`aux_outputs`) get the same losses with suffix `_i`, matched anew.
DETR's weights: loss_ce 1, loss_bbox 5, loss_giou 2 (see `detr_weight_dict`).

Later families plug in by subclassing: `FocalSetCriterion` replaces the labels loss with the
sigmoid focal loss (K logits, no no-object class); `output_sets` can be extended to add more
supervised outputs (e.g. two-stage encoder proposals with suffix `_enc`).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from .matcher import Indices


def detr_weight_dict(loss_ce: float = 1.0, loss_bbox: float = 5.0, loss_giou: float = 2.0,
                     num_aux: int = 5, extra_suffixes: Iterable[str] = ()) -> dict[str, float]:
    """Loss weights for the main output, `num_aux` auxiliary outputs (_0.._{n-1}) and extra suffixes."""
    base = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
    weights = dict(base)
    for suffix in [f"_{i}" for i in range(num_aux)] + list(extra_suffixes):
        weights.update({k + suffix: v for k, v in base.items()})
    return weights


def _num_boxes(targets: list[dict], device: torch.device) -> float:
    """Average number of target boxes per process, at least 1 (the originals' normaliser)."""
    n = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return torch.clamp(n / world, min=1).item()


def _src_permutation_idx(indices: Indices) -> tuple[Tensor, Tensor]:
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


class SetCriterion(nn.Module):
    """criterion(outputs, targets) -> dict of losses; total = sum(loss[k] * weight_dict[k])."""

    LOSSES = ("labels", "boxes", "cardinality")

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, losses: Iterable[str] = ("labels", "boxes", "cardinality")):
        super().__init__()
        losses = tuple(losses)
        unknown = [name for name in losses if name not in self.LOSSES]
        if unknown:
            raise ValueError(f"unknown losses {unknown}; choose from {self.LOSSES}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = losses
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # -- individual losses: (outputs, targets, indices, num_boxes, log) -> dict ------------------
    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: float,
                    log: bool = True) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]  # (B, Q, K+1)
        idx = _src_permutation_idx(indices)
        matched_classes = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = matched_classes
        losses = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}
        if log:
            losses["class_error"] = self._class_error(logits[idx], matched_classes)
        return losses

    @staticmethod
    @torch.no_grad()
    def _class_error(matched_logits: Tensor, matched_classes: Tensor) -> Tensor:
        if matched_classes.numel() == 0:
            return torch.zeros((), device=matched_logits.device)
        correct = (matched_logits.argmax(-1) == matched_classes).float().mean()
        return 100 - 100 * correct

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: float,
                         log: bool = True) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]
        target_lengths = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device)
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(predicted.float(), target_lengths.float())}

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: float,
                   log: bool = True) -> dict[str, Tensor]:
        idx = _src_permutation_idx(indices)
        src = outputs["pred_boxes"][idx]  # (n_matched, 4)
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(src.dtype)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    # -- assembly ---------------------------------------------------------------------------------
    def output_sets(self, outputs: dict) -> Iterator[tuple[str, dict, bool]]:
        """(key suffix, outputs to supervise, log?) in order; subclasses may add more."""
        yield "", {k: v for k, v in outputs.items() if k != "aux_outputs"}, True
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            yield f"_{i}", aux, False

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        device = outputs["pred_logits"].device
        num_boxes = _num_boxes(targets, device)
        losses: dict[str, Tensor] = {}
        for suffix, out, log in self.output_sets(outputs):
            indices = self.matcher(out, targets)
            indices = [(i.to(device), j.to(device)) for i, j in indices]
            for name in self.losses:
                terms = getattr(self, f"loss_{name}")(out, targets, indices, num_boxes, log=log)
                losses.update({k + suffix: v for k, v in terms.items()})
        return losses


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> Tensor:
    """Deformable DETR's normalisation: mean over queries, sum over the rest, / num_boxes."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


class FocalSetCriterion(SetCriterion):
    """Labels loss = sigmoid focal loss over K classes (no no-object logit), times num_queries,
    as Deformable DETR, Conditional DETR and DINO; cardinality counts argmax != K-1 as they do."""

    def __init__(self, num_classes: int, matcher: nn.Module, weight_dict: dict[str, float],
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 losses: Iterable[str] = ("labels", "boxes", "cardinality")):
        super().__init__(num_classes, matcher, weight_dict, eos_coef=1.0, losses=losses)
        # no no-object class weight: the focal loss has no no-object logit, and these releases'
        # criteria hold no buffer (DETR's 368-byte empty_weight would be a tensor they do not keep)
        del self.empty_weight
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: float,
                    log: bool = True) -> dict[str, Tensor]:
        logits = outputs["pred_logits"]  # (B, Q, K)
        idx = _src_permutation_idx(indices)
        matched_classes = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[idx] = matched_classes
        # a float (B, Q, K+1) one-hot with the no-object column sliced off, as the originals build
        # it: the view keeps the K+1 storage for backward (a one_hot(...).to() copy would keep K)
        onehot = torch.zeros((*logits.shape[:2], self.num_classes + 1), dtype=logits.dtype, device=logits.device)
        onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
        onehot = onehot[..., :-1]  # (B, Q, K)
        loss = sigmoid_focal_loss(logits, onehot, num_boxes, self.focal_alpha, self.focal_gamma)
        losses = {"loss_ce": loss * logits.shape[1]}
        if log:
            losses["class_error"] = self._class_error(logits[idx], matched_classes)
        return losses
