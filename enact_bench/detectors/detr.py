"""DETR (Carion et al. 2020) as facebookresearch/detr builds it, and its ENACT variant.

Registered: detr_r50, detr_r50_dc5, detr_r101 (the originals' COCO configurations) and
detr_tiny (resnet18, width 64, 2+2 layers, 10 queries: for CPU tests). Every field of DetrConfig
is an override: create_detector("detr_r50", attention="sdpa", enc_layers=3, ...).
With enact=True/EnactConfig the encoder self-attention becomes enact.EnactAttention, laid out as
the ENACT release's DETR-ENACT (keys transformer.encoder.layers.i.self_attn.W_{q,k,v,o,prob}).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import Tensor, nn

from .common.backbone import Backbone, backbone_weights_path, Joiner
from .base import Detector
from .common.criterion import SetCriterion, detr_weight_dict
from .common.activation import ACTIVATIONS
from .detr_transformer import ATTENTION_MODES, Transformer
from .common.matcher import HungarianMatcher
from .common.mlp import MLP
from .common.nested import batch_images
from .common.position import PositionEmbeddingSine
from .common.postprocess import postprocess_softmax
from .common.config import DetectorConfig
from .common.config_checks import check_positive_ints
from .registry import register_detector, preset_factory

DETR_LR = 1e-4  # facebookresearch/detr main.py
ENACT_LR = 5e-5  # GSavathrakis/ENACT DETR-ENACT main.py


@dataclass(frozen=True)
class DetrConfig(DetectorConfig):
    activation: str = "relu"
    pre_norm: bool = False
    num_queries: int = 100
    attention: str = "mha"  # "mha" (as the original: weights computed and stored) | "sdpa" (fused)
    # matcher costs and loss weights
    ce_loss_coef: float = 1.0
    eos_coef: float = 0.1
    # lr (a DetectorConfig field) None = the release's default (1e-4 DETR, 5e-5 DETR-ENACT)

    def __post_init__(self):
        super().__post_init__()
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}; got {self.attention!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {self.activation!r}")
        check_positive_ints(self, ("num_queries",))
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})")
        if self.hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (half of it encodes y, half x); got {self.hidden_dim}")


class DETR(Detector):
    family = "detr"
    default_lr_backbone = 1e-5

    def __init__(self, cfg: DetrConfig, num_classes: int = 91, enact_config=None,
                 pretrained_backbone: bool = False):
        super().__init__()
        weights_path = backbone_weights_path(pretrained_backbone, cfg.backbone_weights, cfg.backbone)
        lr = cfg.lr if cfg.lr is not None else (ENACT_LR if enact_config is not None else DETR_LR)
        self._set_recipe(cfg, num_classes, enact_config, lr)
        self.num_queries = cfg.num_queries
        self.attention = cfg.attention

        # registration order = the original's state_dict order
        self.transformer = Transformer(
            cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout,
            cfg.activation, cfg.pre_norm, cfg.attention, enact_config, cfg.enact_layers,
        )
        self.class_embed = nn.Linear(cfg.hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(cfg.hidden_dim, cfg.hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(cfg.num_queries, cfg.hidden_dim)
        body = Backbone(cfg.backbone, dilation=cfg.dilation, train_backbone=cfg.lr_backbone > 0,
                        return_layers=("layer4",), weights_path=weights_path)
        self.input_proj = nn.Conv2d(body.num_channels[-1], cfg.hidden_dim, kernel_size=1)
        self.backbone = Joiner(body, PositionEmbeddingSine(cfg.hidden_dim // 2, normalize=True))

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        images, mask = batch_images(images, mask)  # (B, 3, H, W), (B, H, W)
        levels, pos = self.backbone(images, mask)
        src, src_mask = levels[-1]  # (B, C_b, h, w), (B, h, w)
        hs = self.transformer(self.input_proj(src), src_mask, self.query_embed.weight, pos[-1])[0]  # (L, B, Q, C)
        logits = self.class_embed(hs)  # (L, B, Q, K+1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L, B, Q, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def build_criterion(self) -> SetCriterion:
        cfg = self.cfg
        matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou)
        weights = detr_weight_dict(cfg.ce_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef,
                                   num_aux=cfg.dec_layers - 1 if cfg.aux_loss else 0)
        return SetCriterion(self.num_classes, matcher, weights, eos_coef=cfg.eos_coef)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        return postprocess_softmax(outputs, target_sizes)

    def enact_modules(self) -> Iterator[nn.Module]:
        for layer in self.transformer.encoder.layers:
            if not isinstance(layer.self_attn, nn.MultiheadAttention):
                yield layer.self_attn




PRESETS = {
    "detr_r50": (DetrConfig(), "DETR, ResNet-50, 6+6 layers, width 256, 100 queries (41.5M params)"),
    "detr_r50_dc5": (DetrConfig(dilation=True), "DETR-DC5: ResNet-50 with a dilated last stage (stride 16)"),
    "detr_r101": (DetrConfig(backbone="resnet101"), "DETR, ResNet-101"),
    "detr_tiny": (DetrConfig(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                             dim_feedforward=128, num_queries=10),
                  "tiny DETR for CPU tests: resnet18, width 64, 2+2 layers, 10 queries"),
}

for _name, (_cfg, _doc) in PRESETS.items():
    register_detector(_name, family="detr", tiny=_name.endswith("_tiny"), overrides=DetrConfig,
                      description=_doc)(preset_factory(DETR, _cfg))
