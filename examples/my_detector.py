"""A detector of your own, measured and planned by enact-bench (docs/own-model.md).

    enact-bench plan examples/my_detector.py:build --gpu h100-80gb
    enact-bench plan examples/my_detector.py:build --gpu h100-80gb --set small=true --image-size 256x320

`build(...)` is the factory: it returns a ModelSpec, because this model's forward takes only the
images and its loss is a function of its own (a model in HF's convention, forward(pixel_values,
pixel_mask=None, labels=None) returning an output with `.loss`, can be returned bare instead).
Its encoder's self-attention has q_proj / k_proj / v_proj / o_proj projections and takes
`position_embeddings`, the shape enact.patch adapts, so the plan's `enact` variant applies to it.
The loss matches predictions to targets with scipy's Hungarian solver, as DETR does; a fake step
answers that call with a fixed assignment of the same size (and lists it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from scipy.optimize import linear_sum_assignment
from torch import nn

from enact_bench.detectors import ModelSpec


class SelfAttention(nn.Module):
    """Multi-head self-attention, batch-first; position embeddings added to queries and keys."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.o_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None):
        b, s, c = hidden_states.shape
        qk = hidden_states + position_embeddings
        heads = lambda x: x.view(b, s, self.num_heads, c // self.num_heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads(self.q_proj(qk)), heads(self.k_proj(qk)),
                                             heads(self.v_proj(hidden_states)))  # (B, h, S, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, c)), None


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, ffn: int):
        super().__init__()
        self.self_attn = SelfAttention(d_model, num_heads)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn), nn.ReLU(), nn.Linear(ffn, d_model))

    def forward(self, x, pos):
        x = self.norm1(x + self.self_attn(x, position_embeddings=pos)[0])
        return self.norm2(x + self.ffn(x))


def sine_positions(h: int, w: int, d_model: int, device) -> torch.Tensor:
    """(1, h * w, d_model) sine embedding of the row and column of each feature-map position."""
    quarter = d_model // 4
    freq = 10000 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)  # (d/4,)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq  # (h, d/4)
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq  # (w, d/4)
    ys = torch.cat([ys.sin(), ys.cos()], 1)[:, None, :].expand(h, w, 2 * quarter)
    xs = torch.cat([xs.sin(), xs.cos()], 1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([ys, xs], 2).reshape(1, h * w, 4 * quarter)


class MyDetector(nn.Module):
    """ResNet-50 (no weights) -> 1x1 projection -> encoder -> nn.TransformerDecoder over learned
    queries -> class logits (num_classes + 1, the last "no object") and cxcywh boxes."""

    def __init__(self, num_classes=91, d_model=256, num_heads=8, encoder_layers=6, decoder_layers=6,
                 ffn=2048, num_queries=100, small=False):
        super().__init__()
        trunk = torchvision.models.resnet18(weights=None) if small else torchvision.models.resnet50(weights=None)
        self.backbone = nn.Sequential(*list(trunk.children())[:-2])  # stride 32
        self.input_proj = nn.Conv2d(512 if small else 2048, d_model, 1)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(d_model, num_heads, ffn) for _ in range(encoder_layers))
        layer = nn.TransformerDecoderLayer(d_model, num_heads, ffn, dropout=0.1, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)
        self.queries = nn.Embedding(num_queries, d_model)
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.box_head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 4))
        self.d_model = d_model

    def forward(self, pixel_values):
        feat = self.input_proj(self.backbone(pixel_values))  # (B, C, h, w)
        b, c, h, w = feat.shape
        x = feat.flatten(2).transpose(1, 2)  # (B, h * w, C)
        pos = sine_positions(h, w, c, x.device)
        for layer in self.encoder.layers:
            x = layer(x, pos)
        tgt = self.queries.weight[None].expand(b, -1, -1)  # (B, Q, C)
        hs = self.decoder(tgt, x + pos)
        return {"logits": self.class_head(hs), "pred_boxes": self.box_head(hs).sigmoid()}


def set_loss(outputs, targets, eos_coef=0.1):
    """DETR's loss, reduced: one Hungarian matching per image (class probability + L1 box cost),
    cross-entropy over all queries (unmatched ones -> "no object", down-weighted), L1 on matched boxes."""
    logits, boxes = outputs["logits"], outputs["pred_boxes"]  # (B, Q, K + 1), (B, Q, 4)
    num_classes = logits.shape[-1] - 1
    target_classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    box_loss = logits.new_zeros(())
    for i, t in enumerate(targets):
        with torch.no_grad():
            cost = -logits[i].softmax(-1)[:, t["labels"]] + torch.cdist(boxes[i], t["boxes"], p=1)  # (Q, n)
        rows, cols = linear_sum_assignment(cost.cpu())
        rows, cols = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
        target_classes[i, rows] = t["labels"][cols]
        box_loss = box_loss + F.l1_loss(boxes[i, rows], t["boxes"][cols], reduction="sum")
    weight = torch.ones(num_classes + 1, device=logits.device)
    weight[-1] = eos_coef
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    return F.cross_entropy(logits.transpose(1, 2), target_classes, weight) + 5 * box_loss / num_boxes


def build(num_classes: int = 91, num_queries: int = 100, encoder_layers: int = 6, small: bool = False) -> ModelSpec:
    """The factory: `--set small=true` (ResNet-18, width 64, two layers each) for a quick CPU run."""
    if small:
        model = MyDetector(num_classes, d_model=64, num_heads=4, encoder_layers=min(encoder_layers, 2),
                           decoder_layers=2, ffn=128, num_queries=num_queries, small=True)
    else:
        model = MyDetector(num_classes, num_queries=num_queries, encoder_layers=encoder_layers)
    return ModelSpec(model=model, loss_fn=set_loss,
                     make_batch=lambda pixel_values, pixel_mask, targets: {"pixel_values": pixel_values},
                     lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_max_norm=0.1, size_multiple=32,
                     notes=("examples/my_detector.py: a reduced DETR (no auxiliary losses, no GIoU term)",))


if __name__ == "__main__":  # a quick check that the model trains: one step on random data
    spec = build(small=True)
    images = torch.randn(2, 3, 128, 160)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]])}] * 2
    loss = spec.loss_fn(spec.model(images), targets)
    loss.backward()
    print(f"loss {loss.item():.3f}, {sum(p.numel() for p in spec.model.parameters()):,} parameters")
    assert math.isfinite(loss.item())
