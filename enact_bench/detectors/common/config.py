"""DetectorConfig: the fields every family's frozen config shares, validated once.

Each family's config (DetrConfig, ConditionalDetrConfig, AnchorDetrConfig, DeformableDetrConfig,
DinoConfig) subclasses it, redeclares a field only to change its default (dataclass fields keep
their place when redeclared) and adds its own fields after these. Defaults here are DETR's
(facebookresearch/detr main.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from .config_checks import check_backbone, check_dropout, check_positive_ints, normalise_enact_layers


@dataclass(frozen=True)
class DetectorConfig:
    backbone: str = "resnet50"
    dilation: bool = False  # DC5
    backbone_weights: str | None = None  # local torchvision ResNet .pth, with pretrained_backbone=True
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    aux_loss: bool = True
    enact_layers: tuple[int, ...] | None = None  # encoder layers that get ENACT; None = all
    # matcher costs and loss weights
    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    # optimiser (AdamW): lr None = the family's release default
    lr: float | None = None
    lr_backbone: float = 1e-5  # <= 0 freezes the whole backbone, as the originals
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1

    def __post_init__(self):
        """The checks every family needs; a family's __post_init__ calls this first."""
        check_backbone(self)
        check_positive_ints(self, ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward"))
        check_dropout(self)
        normalise_enact_layers(self)
