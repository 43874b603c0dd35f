"""DINO's contrastive denoising (CDN) queries, their attention mask and the split of outputs.

In training, each ground-truth box is repeated in `num_groups` groups; every group holds a
positive copy (box noise inside the box: corners moved by less than half the box size times
`box_noise_scale`) and a negative copy (moved by between one and two times that), and a
fraction `label_noise_ratio / 2` of the labels is replaced by a random class. The noisy labels
go through `label_enc` (content), the noisy boxes through inverse sigmoid (anchors). Queries are
laid out [group 0: pos pad | neg pad, group 1: ..., matching queries]; each half of a group is
`single_pad` = the largest number of boxes in an image, empty slots stay zero.

Attention mask (True = may NOT attend), size (pad_size + num_queries)^2:
  matching queries cannot see any denoising query;
  a denoising group cannot see the other groups (it does see itself and the matching queries).

Facts from IDEA-Research/DINO models/dino/dn_components.py (prepare_for_cdn, dn_post_process);
the number of groups is (2 * dn_number) // (2 * max boxes per image), at least 1, as there.
Random draws are made in the same order as there (label noise, new labels, signs, magnitudes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import is_fake
from torch import Tensor, nn

from .common.inverse_sigmoid import inverse_sigmoid


@dataclass
class DenoisingMeta:
    pad_size: int  # number of denoising queries (all groups)
    num_groups: int
    single_pad: int  # queries per half group (positive or negative) = max boxes per image
    outputs: dict | None = None  # denoising part of the outputs, set by the detector


def num_dn_groups(dn_number: int, max_boxes: int) -> int:
    """The release's group count: dn_number pairs of queries shared by the largest image's boxes."""
    doubled = dn_number * 2
    if max_boxes == 0:
        return 1
    if doubled >= 100:
        doubled = doubled // (max_boxes * 2)
    elif doubled < 1:
        doubled = 1
    return max(doubled, 1)


def dn_attention_mask(pad_size: int, num_groups: int, num_queries: int, device=None) -> Tensor:
    """(pad_size + num_queries)^2 bool mask, True = blocked (nn.MultiheadAttention's convention)."""
    size = pad_size + num_queries
    mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    mask[pad_size:, :pad_size] = True  # matching queries cannot see denoising queries
    group = pad_size // num_groups
    for g in range(num_groups):
        rows = slice(group * g, group * (g + 1))
        mask[rows, :group * g] = True  # earlier groups
        mask[rows, group * (g + 1):pad_size] = True  # later groups
    return mask


def noisy_boxes(boxes: Tensor, negative: Tensor, box_noise_scale: float) -> Tensor:
    """(n, 4) cxcywh -> corners jittered by up to half the size (positive) or 1-2x (negative)."""
    xyxy = torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    diff = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], 1)
    sign = torch.randint_like(boxes, low=0, high=2, dtype=torch.float32) * 2.0 - 1.0
    part = torch.rand_like(boxes)
    part[negative] += 1.0
    part *= sign
    xyxy = (xyxy + part * diff * box_noise_scale).clamp(min=0.0, max=1.0)
    return torch.cat([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


def prepare_cdn(targets: list[dict], dn_number: int, label_noise_ratio: float, box_noise_scale: float,
                num_queries: int, num_classes: int, hidden_dim: int, label_enc: nn.Embedding):
    """-> (content (B, pad, C), anchors unsigmoided (B, pad, 4), attn_mask (pad+Q, pad+Q), DenoisingMeta)."""
    device = label_enc.weight.device
    counts = [len(t["labels"]) for t in targets]
    batch_size, max_boxes = len(targets), max(counts) if counts else 0
    groups = num_dn_groups(dn_number, max_boxes)
    labels = torch.cat([t["labels"] for t in targets]).to(device)
    boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=torch.float32)
    batch_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(counts)])
    n_total = len(labels)

    known_labels = labels.repeat(2 * groups, 1).view(-1)  # (2G * n_total,) [g0 pos, g0 neg, g1 pos, ...]
    known_bid = batch_idx.repeat(2 * groups, 1).view(-1)
    known_boxes = boxes.repeat(2 * groups, 1)  # (2G * n_total, 4)
    noisy_labels = known_labels.clone()
    if label_noise_ratio > 0:
        p = torch.rand_like(noisy_labels.float())
        if is_fake(p):  # FakeTensorMode (the estimate): nonzero has a data-dependent size; the same
            # shapes downstream, a label vector's worth (8 B per dn query) more transient memory
            noisy_labels = torch.where(p < label_noise_ratio * 0.5, torch.randint_like(noisy_labels, 0, num_classes),
                                       noisy_labels)
        else:  # the release's draws, in its order
            chosen = torch.nonzero(p < label_noise_ratio * 0.5).view(-1)
            noisy_labels.scatter_(0, chosen, torch.randint_like(chosen, 0, num_classes))
    positive = (torch.arange(n_total, device=device).unsqueeze(0).repeat(groups, 1)
                + (torch.arange(groups, device=device) * n_total * 2).unsqueeze(1)).flatten()
    negative = positive + n_total
    noisy = known_boxes.clone()
    if box_noise_scale > 0:
        noisy = noisy_boxes(known_boxes, negative, box_noise_scale)

    single_pad = max_boxes
    pad_size = single_pad * 2 * groups
    content = torch.zeros(batch_size, pad_size, hidden_dim, device=device)
    anchors = torch.zeros(batch_size, pad_size, 4, device=device)
    if n_total:
        slot = torch.cat([torch.arange(n, device=device) for n in counts])  # index within its image
        slot = torch.cat([slot + single_pad * i for i in range(2 * groups)])
        content[known_bid, slot] = label_enc(noisy_labels).to(content.dtype)
        anchors[known_bid, slot] = inverse_sigmoid(noisy, eps=1e-3)
    mask = dn_attention_mask(pad_size, groups, num_queries, device)
    return content, anchors, mask, DenoisingMeta(pad_size, groups, single_pad)


def dn_matching_indices(targets: list[dict], meta: DenoisingMeta, device) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of positive denoising queries to their boxes, per image."""
    out = []
    for t in targets:
        n = len(t["labels"])
        if n == 0:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            out.append((empty, empty))
            continue
        tgt = torch.arange(n, device=device).unsqueeze(0).repeat(meta.num_groups, 1)  # (G, n)
        src = (torch.arange(meta.num_groups, device=device) * meta.single_pad * 2).unsqueeze(1) + tgt
        out.append((src.flatten(), tgt.flatten()))
    return out
