"""Anchor DETR (Wang et al. 2022) as megvii-research/AnchorDETR builds it, and its ENACT variant.

Registered: anchor_detr_r50_dc5 (the original's default: ResNet-50 DC5, one feature level, RCDA,
300 anchor points x 3 patterns = 900 queries, 6+6 layers, width 256, FFN 1024, no dropout, focal
loss), anchor_detr_r50 (without DC5) and anchor_detr_tiny (CPU tests). Every field of
AnchorDetrConfig is an override.

State-dict keys as the original: backbone.body.* (no position-embedding Joiner: Anchor DETR
computes its position embeddings from the mask), input_proj.0.{0: conv, 1: GroupNorm},
transformer.*; with ENACT transformer.encoder_layers.i.ENACT.W_prob as the ENACT release.

`enact=True` means the ENACT release's Anchor settings: the reference preset with sigma 5
(its Anchor-DETR-ENACT default; 3 for DETR and Conditional DETR). `enact_sigma` overrides sigma
for any config. See docs/detectors-conditional-anchor.md for where we differ from the release.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import Tensor, nn

from .anchor_enact import ANCHOR_SIGMA
from .anchor_transformer import AnchorTransformer
from .common.backbone import Backbone, backbone_weights_path
from .base import Detector
from .common.criterion import FocalSetCriterion, detr_weight_dict
from .common.matcher import FocalClassCost, HungarianMatcher
from .common.nested import batch_images
from .common.postprocess import postprocess_topk_sigmoid
from .common.config import DetectorConfig
from .common.config_checks import check_positive_ints
from .registry import register_detector, preset_factory

ANCHOR_LR = 1e-4   # megvii-research/AnchorDETR main.py
ENACT_LR = 5e-5    # GSavathrakis/ENACT Anchor-DETR-ENACT main.py


@dataclass(frozen=True)
class AnchorDetrConfig(DetectorConfig):
    dilation: bool = True  # DC5, the original's default
    dim_feedforward: int = 1024
    dropout: float = 0.0
    num_query_position: int = 300
    num_query_pattern: int = 3
    enact_sigma: float | None = None  # None: the config's sigma, or 5.0 for the reference preset
    # matcher costs, loss weights, focal loss
    set_cost_class: float = 2.0
    cls_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    num_select: int = 100
    # lr (a DetectorConfig field) None = the release's default (1e-4 Anchor DETR, 5e-5 with ENACT)
    # ours, not the original's: the same outputs with less training memory (queries share the key
    # tensors, no repeated position maps, RCDA without the original's weight copy, the decoder
    # self-attention through SDPA without stored weights). False keeps what the original keeps.
    lean_memory: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, ("num_query_position", "num_query_pattern", "num_select"))
        if self.hidden_dim % self.nheads or self.hidden_dim % 32:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads}) and by "
                             "32 (GroupNorm(32) after the input projection)")
        if not isinstance(self.lean_memory, bool):
            raise ValueError(f"lean_memory must be True or False; got {self.lean_memory!r}")
        if self.enact_sigma is not None and not self.enact_sigma > 0:
            raise ValueError(f"enact_sigma must be a positive number or None; got {self.enact_sigma!r}")


def anchor_enact_config(enact_config, sigma: float | None):
    """enact=True arrives as EnactConfig.reference() (sigma 3): the release runs Anchor DETR at 5."""
    if enact_config is None:
        return None
    from enact import EnactConfig

    if sigma is not None:
        return enact_config.replace(sigma=float(sigma))
    if enact_config == EnactConfig.reference():
        return enact_config.replace(sigma=ANCHOR_SIGMA)
    return enact_config


class AnchorDETR(Detector):
    family = "anchor_detr"

    def __init__(self, cfg: AnchorDetrConfig, num_classes: int = 91, enact_config=None,
                 pretrained_backbone: bool = False):
        super().__init__()
        weights_path = backbone_weights_path(pretrained_backbone, cfg.backbone_weights, cfg.backbone)
        enact_config = anchor_enact_config(enact_config, cfg.enact_sigma)
        lr = cfg.lr if cfg.lr is not None else (ENACT_LR if enact_config is not None else ANCHOR_LR)
        self._set_recipe(cfg, num_classes, enact_config, lr)
        self.num_queries = cfg.num_query_position * cfg.num_query_pattern
        self.attention = "rcda"

        # registration order = the original's state_dict order
        self.transformer = AnchorTransformer(
            cfg.hidden_dim, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout,
            cfg.num_query_position, cfg.num_query_pattern, num_classes, enact_config, cfg.enact_layers,
            lean=cfg.lean_memory,
        )
        body = Backbone(cfg.backbone, dilation=cfg.dilation, train_backbone=cfg.lr_backbone > 0,
                        return_layers=("layer4",), weights_path=weights_path)
        proj = nn.Sequential(nn.Conv2d(body.num_channels[-1], cfg.hidden_dim, kernel_size=1),
                             nn.GroupNorm(32, cfg.hidden_dim))
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.zeros_(proj[0].bias)
        self.input_proj = nn.ModuleList([proj])
        self.backbone = body

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        images, mask = batch_images(images, mask)            # (B, 3, H, W), (B, H, W)
        src, src_mask = self.backbone(images, mask)[-1]      # (B, C_b, h, w), (B, h, w)
        logits, boxes = self.transformer(self.input_proj[0](src), src_mask)   # (L, B, Q, K), (L, B, Q, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def build_criterion(self) -> FocalSetCriterion:
        cfg = self.cfg
        matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                   class_cost=FocalClassCost(alpha=0.25, gamma=2.0))
        # the original's weight_dict also lists the two-stage `_enc` terms, which it never computes
        weights = detr_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef,
                                   num_aux=cfg.dec_layers - 1 if cfg.aux_loss else 0,
                                   extra_suffixes=("_enc",) if cfg.aux_loss else ())
        return FocalSetCriterion(self.num_classes, matcher, weights, focal_alpha=cfg.focal_alpha,
                                 losses=("labels", "boxes"))

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        return postprocess_topk_sigmoid(outputs, target_sizes, self.cfg.num_select)

    def enact_modules(self) -> Iterator[nn.Module]:
        for layer in self.transformer.encoder_layers:
            if hasattr(layer, "ENACT"):
                yield layer.ENACT




PRESETS = {
    "anchor_detr_r50_dc5": (AnchorDetrConfig(),
                            "Anchor DETR-DC5, ResNet-50, RCDA, 300 anchors x 3 patterns (37.0M params)"),
    "anchor_detr_r50": (AnchorDetrConfig(dilation=False), "Anchor DETR, ResNet-50 without DC5"),
    "anchor_detr_tiny": (AnchorDetrConfig(backbone="resnet18", dilation=False, hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                                          dim_feedforward=128, num_query_position=6, num_query_pattern=2),
                         "tiny Anchor DETR for CPU tests: resnet18 (no DC5: basic blocks cannot dilate), width 64, 2+2 layers, 6 anchors x 2 patterns"),
}

for _name, (_cfg, _doc) in PRESETS.items():
    register_detector(_name, family="anchor_detr", tiny=_name.endswith("_tiny"),
                      overrides=AnchorDetrConfig, description=_doc)(preset_factory(AnchorDETR, _cfg))
