"""Box conversions and (generalised) IoU, through torchvision.ops where it has them.

Formats: cxcywh = (center x, center y, width, height), xyxy = (x0, y0, x1, y1); all boxes are
(..., 4) tensors. DETR-family predictions are normalised cxcywh in [0, 1].
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake
from torchvision.ops import box_convert, generalized_box_iou as _tv_generalized_box_iou


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    return box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    return box_convert(boxes, in_fmt="xyxy", out_fmt="cxcywh")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, 4) and (M, 4) xyxy boxes -> (N, M) GIoU. Degenerate boxes (x1 < x0) are an error."""
    if is_fake(boxes1) or is_fake(boxes2):  # shapes only (memory estimate): no values to check
        return _tv_generalized_box_iou(boxes1, boxes2)
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()) or not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError("generalized_box_iou needs xyxy boxes with x1 >= x0 and y1 >= y0 (got degenerate boxes)")
    return _tv_generalized_box_iou(boxes1, boxes2)


def scale_boxes(boxes_xyxy: Tensor, sizes_hw: Tensor) -> Tensor:
    """(B, N, 4) normalised xyxy and (B, 2) (h, w) -> (B, N, 4) absolute xyxy in pixels."""
    img_h, img_w = sizes_hw.unbind(1)
    scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(boxes_xyxy.dtype)  # (B, 4)
    return boxes_xyxy * scale[:, None, :]
