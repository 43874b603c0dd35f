"""Deformable DETR (Zhu et al. 2021) as fundamentalvision/Deformable-DETR builds it, and its ENACT variant.

Registered (the release's three COCO configurations and their tiny CPU forms):
    deformable_detr_r50              single-stage
    deformable_detr_r50_box_refine   + iterative bounding-box refinement
    deformable_detr_r50_two_stage    + box refinement + two-stage (the release's strongest form)
    deformable_detr_tiny, deformable_detr_tiny_box_refine, deformable_detr_tiny_two_stage
Every field of DeformableDetrConfig is an override.

Architecture and defaults (the release's main.py): ResNet-50 C3-C5 (strides 8/16/32) plus one
extra level (3x3 stride-2 conv on C5), each projected to 256 channels with GroupNorm(32);
level embeddings; 6 encoder + 6 decoder layers, FFN 1024, 8 heads, 4 points per level; 300
queries; sigmoid focal loss (alpha 0.25, gamma 2), matcher costs class 2 / bbox 5 / giou 2,
loss weights 2 / 5 / 2 on every decoder layer (+ `_enc` for the two-stage proposals);
postprocess: sigmoid, top 100 over queries x classes. AdamW lr 2e-4, backbone 2e-5, sampling
offsets and reference points at 0.1 x lr, weight decay 1e-4, gradient clipping 0.1.

The state_dict layout is the release's, including its aliases: without box refinement the
6 decoder heads are one shared module listed 6 times (`class_embed.0..5` hold the same tensors);
with box refinement the heads are also reachable as `transformer.decoder.bbox_embed.i` (and, for
two-stage, `transformer.decoder.class_embed.i`), so those keys appear twice as in the release.

ENACT (enact=True / EnactConfig) clusters the encoder's query tokens (enact.tokens; docs/detectors-deformable.md):
an *extension beyond the ENACT paper*. Extra keys: `transformer.encoder.enact_clustering.<i>.W_prob.*`.
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
from .common.criterion import FocalSetCriterion, detr_weight_dict
from .common.inverse_sigmoid import inverse_sigmoid
from .deformable_transformer import DeformableTransformer
from .common.matcher import FocalClassCost, HungarianMatcher
from .common.mlp import MLP
from .common.ms_deform_attn import check_msda, msda_attention_label, set_msda
from .common.nested import batch_images, downsample_mask
from .common.position import PositionEmbeddingSine
from .common.postprocess import postprocess_topk_sigmoid
from .common.config import DetectorConfig
from .common.config_checks import check_positive_ints
from .registry import register_detector, preset_factory


@dataclass(frozen=True)
class DeformableDetrConfig(DetectorConfig):
    dim_feedforward: int = 1024
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = 300
    with_box_refine: bool = False
    two_stage: bool = False
    # deformable-attention core: "op" (registered op, the compiled kernel's memory) | "pytorch" (autograd reference)
    msda: str = "op"
    # matcher costs, loss weights, focal loss
    set_cost_class: float = 2.0
    cls_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    num_select: int = 100  # detections kept per image by postprocess
    # optimiser (AdamW)
    lr: float = 2e-4
    lr_backbone: float = 2e-5  # <= 0 freezes the whole backbone, as the original
    lr_linear_proj_mult: float = 0.1  # for sampling_offsets and reference_points

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, ("num_feature_levels", "enc_n_points", "dec_n_points", "num_queries", "num_select"))
        if self.hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (input_proj uses GroupNorm(32)); got {self.hidden_dim}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})")
        if self.num_feature_levels < 3:
            raise ValueError(f"num_feature_levels must be >= 3 (C3-C5 plus extra levels); got {self.num_feature_levels}")
        if self.two_stage and not self.with_box_refine:
            raise ValueError("two_stage=True needs with_box_refine=True (the release's two-stage configuration)")
        check_msda(self.msda)


class DeformableCriterion(FocalSetCriterion):
    """The release's SetCriterion: focal labels + L1/GIoU boxes + cardinality on the final and
    auxiliary decoder outputs, and, for two-stage, on the encoder proposals (`enc_outputs`)
    against class-agnostic targets (every label 0), suffix `_enc`."""

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward({k: v for k, v in outputs.items() if k != "enc_outputs"}, targets)
        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            device = enc["pred_logits"].device
            bin_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            num_boxes = _num_boxes(targets, device)
            indices = [(i.to(device), j.to(device)) for i, j in self.matcher(enc, bin_targets)]
            for name in self.losses:
                terms = getattr(self, f"loss_{name}")(enc, bin_targets, indices, num_boxes, log=False)
                losses.update({k + "_enc": v for k, v in terms.items()})
        return losses


def _num_boxes(targets, device):
    from .common.criterion import _num_boxes as shared

    return shared(targets, device)


class DeformableDETR(Detector):
    family = "deformable_detr"

    def __init__(self, cfg: DeformableDetrConfig, num_classes: int = 91, enact_config=None,
                 pretrained_backbone: bool = False):
        super().__init__()
        weights_path = backbone_weights_path(pretrained_backbone, cfg.backbone_weights, cfg.backbone)
        self._set_recipe(cfg, num_classes, enact_config, cfg.lr)
        self.num_queries = cfg.num_queries
        self.num_feature_levels = cfg.num_feature_levels
        self.with_box_refine = cfg.with_box_refine
        self.two_stage = cfg.two_stage
        hidden = cfg.hidden_dim

        # registration order = the original's state_dict order
        self.transformer = DeformableTransformer(
            hidden, cfg.nheads, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout, "relu",
            return_intermediate_dec=True, num_feature_levels=cfg.num_feature_levels,
            dec_n_points=cfg.dec_n_points, enc_n_points=cfg.enc_n_points, two_stage=cfg.two_stage,
            two_stage_num_proposals=cfg.num_queries, enact_config=enact_config, enact_layers=cfg.enact_layers)
        class_embed = self.class_embed = nn.Linear(hidden, num_classes)  # replaced by ModuleLists below,
        bbox_embed = self.bbox_embed = MLP(hidden, hidden, 4, 3)  # keeping the release's key order
        if not cfg.two_stage:
            self.query_embed = nn.Embedding(cfg.num_queries, hidden * 2)
        body = Backbone(cfg.backbone, dilation=cfg.dilation, train_backbone=cfg.lr_backbone > 0,
                        return_layers=("layer2", "layer3", "layer4"),
                        weights_path=weights_path)
        projections = [nn.Sequential(nn.Conv2d(c, hidden, kernel_size=1), nn.GroupNorm(32, hidden))
                       for c in body.num_channels]
        in_channels = body.num_channels[-1]
        for _ in range(cfg.num_feature_levels - len(body.num_channels)):  # extra levels: 3x3 stride 2
            projections.append(nn.Sequential(nn.Conv2d(in_channels, hidden, kernel_size=3, stride=2, padding=1),
                                             nn.GroupNorm(32, hidden)))
            in_channels = hidden
        self.input_proj = nn.ModuleList(projections)
        # Deformable DETR's sine embedding: (cumsum - 0.5) / (total + 1e-6) * 2 pi
        self.backbone = Joiner(body, PositionEmbeddingSine(hidden // 2, normalize=True, offset=-0.5))

        prior_prob = 0.01
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        # the last class/box head of two-stage scores the encoder proposals
        num_pred = cfg.dec_layers + 1 if cfg.two_stage else cfg.dec_layers
        if cfg.with_box_refine:
            self.class_embed = nn.ModuleList([copy.deepcopy(class_embed) for _ in range(num_pred)])
            self.bbox_embed = nn.ModuleList([copy.deepcopy(bbox_embed) for _ in range(num_pred)])
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed for _ in range(num_pred)])
            self.bbox_embed = nn.ModuleList([bbox_embed for _ in range(num_pred)])
            self.transformer.decoder.bbox_embed = None
        if cfg.two_stage:
            self.transformer.decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)
        set_msda(self, cfg.msda)  # every MSDeformAttn, the clustered encoder layers' included
        self.attention = msda_attention_label(cfg.msda)

    # -- features ----------------------------------------------------------------------------------
    def multiscale_features(self, images: Tensor, mask: Tensor):
        """-> per level: projected maps (B, C, h_l, w_l), masks (B, h_l, w_l), positions (B, C, h_l, w_l)."""
        levels, pos = self.backbone(images, mask)
        srcs = [proj(x) for proj, (x, _) in zip(self.input_proj, levels)]
        masks = [m for _, m in levels]
        pos = list(pos)
        for lvl in range(len(levels), self.num_feature_levels):
            src = self.input_proj[lvl](levels[-1][0] if lvl == len(levels) else srcs[-1])
            m = downsample_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(m)
            pos.append(self.backbone[1](m).to(src.dtype))
        return srcs, masks, pos

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        images, mask = batch_images(images, mask)  # (B, 3, H, W), (B, H, W)
        srcs, masks, pos = self.multiscale_features(images, mask)
        query_embeds = None if self.two_stage else self.query_embed.weight
        hs, init_reference, inter_references, enc_class, enc_coord_unact = \
            self.transformer(srcs, masks, pos, query_embeds)  # hs (L, B, Q, C)

        classes, coords = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else inter_references[lvl - 1])
            classes.append(self.class_embed[lvl](hs[lvl]))
            delta = self.bbox_embed[lvl](hs[lvl])                       # (B, Q, 4)
            if reference.shape[-1] == 4:
                delta += reference
            else:
                delta[..., :2] += reference
            coords.append(delta.sigmoid())
        # stacked as the release: the outputs are views of (L, B, Q, K) / (L, B, Q, 4) copies, so
        # its training holds the stacked boxes besides each layer's sigmoid kept for backward
        classes, coords = torch.stack(classes), torch.stack(coords)
        out = {"pred_logits": classes[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(classes[:-1], coords[:-1])]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord_unact.sigmoid()}
        return out

    # -- training / evaluation -------------------------------------------------------------------
    def build_criterion(self) -> DeformableCriterion:
        cfg = self.cfg
        matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                   class_cost=FocalClassCost(alpha=0.25, gamma=2.0))
        # the release adds the `_enc` weights whenever aux_loss is on (used by two-stage only)
        weights = detr_weight_dict(cfg.cls_loss_coef, cfg.bbox_loss_coef, cfg.giou_loss_coef,
                                   num_aux=cfg.dec_layers - 1 if cfg.aux_loss else 0,
                                   extra_suffixes=("_enc",) if cfg.aux_loss else ())
        return DeformableCriterion(self.num_classes, matcher, weights, focal_alpha=cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        return postprocess_topk_sigmoid(outputs, target_sizes, num_select=self.cfg.num_select)

    LINEAR_PROJ_NAMES = ("reference_points", "sampling_offsets")

    def is_backbone_param(self, name: str) -> bool:
        return "backbone.0" in name

    def param_groups(self, lr: float | None = None, lr_backbone: float | None = None,
                     weight_decay: float | None = None) -> list[dict]:
        """The release's three AdamW groups: rest @ lr, backbone @ lr_backbone, sampling offsets and
        reference points @ lr * lr_linear_proj_mult (name matching by substring, as the release)."""
        lr = self.cfg.lr if lr is None else lr
        lr_backbone = self.cfg.lr_backbone if lr_backbone is None else lr_backbone
        wd = self.cfg.weight_decay if weight_decay is None else weight_decay
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]

        def is_proj(n: str) -> bool:
            return any(k in n for k in self.LINEAR_PROJ_NAMES)

        return [
            {"params": [p for n, p in named if not self.is_backbone_param(n) and not is_proj(n)], "lr": lr,
             "weight_decay": wd},
            {"params": [p for n, p in named if self.is_backbone_param(n)], "lr": lr_backbone, "weight_decay": wd},
            {"params": [p for n, p in named if is_proj(n)], "lr": lr * self.cfg.lr_linear_proj_mult,
             "weight_decay": wd},
        ]

    def enact_modules(self) -> Iterator[nn.Module]:
        clustering = self.transformer.encoder.enact_clustering
        if clustering is not None:
            for key in sorted(clustering, key=int):
                yield clustering[key]




_TINY = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=64,
             enc_n_points=2, dec_n_points=2, num_queries=20)
PRESETS = {
    "deformable_detr_r50": (DeformableDetrConfig(),
                            "Deformable DETR, ResNet-50, 4 levels, 6+6 layers, 300 queries (40.1M params)"),
    "deformable_detr_r50_box_refine": (DeformableDetrConfig(with_box_refine=True),
                                       "Deformable DETR + iterative box refinement (40.8M params)"),
    "deformable_detr_r50_two_stage": (DeformableDetrConfig(with_box_refine=True, two_stage=True),
                                      "Deformable DETR + box refinement + two-stage (41.2M params)"),
    "deformable_detr_tiny": (DeformableDetrConfig(**_TINY),
                             "tiny Deformable DETR for CPU tests: resnet18, width 64, 2+2 layers, 20 queries"),
    "deformable_detr_tiny_box_refine": (DeformableDetrConfig(**_TINY, with_box_refine=True),
                                        "tiny Deformable DETR + box refinement, for CPU tests"),
    "deformable_detr_tiny_two_stage": (DeformableDetrConfig(**_TINY, with_box_refine=True, two_stage=True),
                                       "tiny two-stage Deformable DETR, for CPU tests"),
}

for _name, (_cfg, _doc) in PRESETS.items():
    register_detector(_name, family="deformable_detr", tiny="_tiny" in _name, overrides=DeformableDetrConfig,
                      description=_doc)(preset_factory(DeformableDETR, _cfg))
