"""Conditional DETR (Meng et al. 2021) as Atten4Vis/ConditionalDETR builds it, and its ENACT variant.

Registered: conditional_detr_r50, conditional_detr_r50_dc5, conditional_detr_r101,
conditional_detr_r101_dc5 (the original's COCO configurations: 300 queries, focal loss, 6+6
layers, width 256, FFN 2048, dropout 0.1) and conditional_detr_tiny (CPU tests). Every field of
ConditionalDetrConfig is an override.

The encoder is DETR's (shared `detr_transformer.EncoderLayer`, so `attention="sdpa"` and ENACT
work as for DETR; `attention="sdpa"` also sends the decoder's self- and cross-attention through
F.scaled_dot_product_attention, the same numbers without stored weights); with ENACT its self-attention is enact.EnactAttention with the keys of the
ENACT release's Conditional-DETR-ENACT (transformer.encoder.layers.i.self_attn.W_{q,k,v,o,prob}),
no padding mask, sigma 3. The decoder is Conditional DETR's (`conditional_transformer`).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor, nn

from .common.backbone import Backbone, backbone_weights_path, Joiner
from .base import Detector
from .conditional_transformer import ConditionalDecoder, ConditionalDecoderLayer
from .common.criterion import FocalSetCriterion, detr_weight_dict
from .detr_transformer import ATTENTION_MODES, Encoder, EncoderLayer
from .common.matcher import FocalClassCost, HungarianMatcher
from .common.enact_layers import enact_layers as enact_layer_indices
from .common.inverse_sigmoid import inverse_sigmoid
from .common.mlp import MLP
from .common.nested import batch_images
from .common.position import PositionEmbeddingSine
from .common.postprocess import postprocess_topk_sigmoid
from .common.config import DetectorConfig
from .common.config_checks import check_positive_ints
from .registry import register_detector, preset_factory

CONDITIONAL_LR = 1e-4   # Atten4Vis/ConditionalDETR main.py
ENACT_LR = 5e-5         # GSavathrakis/ENACT Conditional-DETR-ENACT main.py


@dataclass(frozen=True)
class ConditionalDetrConfig(DetectorConfig):
    num_queries: int = 300
    attention: str = "mha"  # every attention: "mha" (original: weights stored) | "sdpa" (no weights kept)
    # matcher costs, loss weights, focal loss
    set_cost_class: float = 2.0
    cls_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    num_select: int = 100  # post-processing: top-k over queries x classes
    # lr (a DetectorConfig field) None = the release's default (1e-4 Conditional DETR, 5e-5 with ENACT)

    def __post_init__(self):
        super().__post_init__()
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}; got {self.attention!r}")
        check_positive_ints(self, ("num_queries", "num_select"))
        if self.hidden_dim % (2 * self.nheads):
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by 2 * nheads ({2 * self.nheads}): "
                             "the sine embeddings split it into x/y halves and heads")


class ConditionalTransformer(nn.Module):
    """transformer.encoder (DETR's) + transformer.decoder (conditional); Xavier init as the original."""

    def __init__(self, cfg: ConditionalDetrConfig, enact_config=None):
        super().__init__()
        d, need_weights = cfg.hidden_dim, cfg.attention == "mha"
        enact_set = set(enact_layer_indices(cfg.enc_layers, cfg.enact_layers))
        plain = EncoderLayer(nn.MultiheadAttention(d, cfg.nheads, dropout=cfg.dropout), d, cfg.dim_feedforward,
                             cfg.dropout, need_weights=need_weights)
        enact = None
        if enact_config is not None:
            from enact import EnactAttention  # only the ENACT variants need the plug-in

            enact = EncoderLayer(EnactAttention(d, cfg.nheads, config=enact_config), d, cfg.dim_feedforward,
                                 cfg.dropout, need_weights=False, use_padding_mask=enact_config.mask_padding)
        self.encoder = Encoder([copy.deepcopy(enact if (enact is not None and i in enact_set) else plain)
                                for i in range(cfg.enc_layers)])
        layer = ConditionalDecoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, need_weights)
        self.decoder = ConditionalDecoder(layer, cfg.dec_layers, d)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.d_model = d

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """src, pos (B, C, h, w); mask (B, h, w); query_embed (Q, C)
        -> hs (layers, B, Q, C), reference points (B, Q, 2)."""
        bs = src.shape[0]
        src = src.flatten(2).permute(2, 0, 1)              # (B, C, h, w) -> (S, B, C)
        pos = pos_embed.flatten(2).permute(2, 0, 1)        # (S, B, C)
        query_pos = query_embed.unsqueeze(1).repeat(1, bs, 1)  # (Q, C) -> (Q, B, C)
        mask = mask.flatten(1)                             # (B, S)
        memory = self.encoder(src, mask, pos)
        return self.decoder(torch.zeros_like(query_pos), memory, mask, pos, query_pos)


class ConditionalDETR(Detector):
    family = "conditional_detr"

    def __init__(self, cfg: ConditionalDetrConfig, num_classes: int = 91, enact_config=None,
                 pretrained_backbone: bool = False):
        super().__init__()
        weights_path = backbone_weights_path(pretrained_backbone, cfg.backbone_weights, cfg.backbone)
        lr = cfg.lr if cfg.lr is not None else (ENACT_LR if enact_config is not None else CONDITIONAL_LR)
        self._set_recipe(cfg, num_classes, enact_config, lr)
        self.num_queries = cfg.num_queries
        self.attention = cfg.attention

        # registration order = the original's state_dict order
        self.transformer = ConditionalTransformer(cfg, enact_config)
        self.class_embed = nn.Linear(cfg.hidden_dim, num_classes)
        self.bbox_embed = MLP(cfg.hidden_dim, cfg.hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.hidden_dim)
        body = Backbone(cfg.backbone, dilation=cfg.dilation, train_backbone=cfg.lr_backbone > 0,
                        return_layers=("layer4",), weights_path=weights_path)
        self.input_proj = nn.Conv2d(body.num_channels[-1], cfg.hidden_dim, kernel_size=1)
        self.backbone = Joiner(body, PositionEmbeddingSine(cfg.hidden_dim // 2, normalize=True))

        prior_prob = 0.01  # focal-loss prior on the class biases, as the original
        nn.init.constant_(self.class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        images, mask = batch_images(images, mask)                      # (B, 3, H, W), (B, H, W)
        levels, pos = self.backbone(images, mask)
        src, src_mask = levels[-1]                                     # (B, C_b, h, w), (B, h, w)
        hs, reference = self.transformer(self.input_proj(src), src_mask, self.query_embed.weight, pos[-1])
        ref_logit = inverse_sigmoid(reference)                        # (B, Q, 2)
        coords = []
        for layer_hs in hs:   # one layer at a time, in place, as the original (what it keeps alive)
            tmp = self.bbox_embed(layer_hs)                            # (B, Q, 4)
            tmp[..., :2] += ref_logit
            coords.append(tmp.sigmoid())
        boxes = torch.stack(coords)                                    # (L, B, Q, 4)
        logits = self.class_embed(hs)                                  # (L, B, Q, K)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def build_criterion(self) -> FocalSetCriterion:
        cfg = self.cfg
        matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                   class_cost=FocalClassCost(alpha=0.25, gamma=2.0))
        weights = detr_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef,
                                   num_aux=cfg.dec_layers - 1 if cfg.aux_loss else 0)
        return FocalSetCriterion(self.num_classes, matcher, weights, focal_alpha=cfg.focal_alpha,
                                 losses=("labels", "boxes", "cardinality"))

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        return postprocess_topk_sigmoid(outputs, target_sizes, self.cfg.num_select)

    def enact_modules(self) -> Iterator[nn.Module]:
        for layer in self.transformer.encoder.layers:
            if not isinstance(layer.self_attn, nn.MultiheadAttention):
                yield layer.self_attn




PRESETS = {
    "conditional_detr_r50": (ConditionalDetrConfig(),
                             "Conditional DETR, ResNet-50, 6+6 layers, 300 queries, focal loss (43.4M params)"),
    "conditional_detr_r50_dc5": (ConditionalDetrConfig(dilation=True), "Conditional DETR-DC5, ResNet-50"),
    "conditional_detr_r101": (ConditionalDetrConfig(backbone="resnet101"),
                              "Conditional DETR, ResNet-101 (the ENACT paper's setting)"),
    "conditional_detr_r101_dc5": (ConditionalDetrConfig(backbone="resnet101", dilation=True),
                                  "Conditional DETR-DC5, ResNet-101"),
    "conditional_detr_tiny": (ConditionalDetrConfig(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2,
                                                    dec_layers=2, dim_feedforward=128, num_queries=12),
                              "tiny Conditional DETR for CPU tests: resnet18, width 64, 2+2 layers, 12 queries"),
}

for _name, (_cfg, _doc) in PRESETS.items():
    register_detector(_name, family="conditional_detr", tiny=_name.endswith("_tiny"),
                      overrides=ConditionalDetrConfig, description=_doc)(preset_factory(ConditionalDETR, _cfg))
