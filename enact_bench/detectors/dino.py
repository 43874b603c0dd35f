"""DINO (Zhang et al. 2023), 4-scale ResNet-50, as IDEA-Research/DINO builds it; and its ENACT variant.

Registered: `dino_r50_4scale` (config/DINO/DINO_4scale.py + scripts/DINO_train.sh's overrides:
dn_box_noise_scale 1.0) and `dino_tiny` for CPU tests. Every field of DinoConfig is an override.

Architecture and defaults: ResNet-50 C3-C5 + one extra level (3x3 stride-2 conv on C5), each to
256 channels with GroupNorm(32); sine positions with temperature 20; 6 encoder + 6 decoder
layers, FFN 2048, 8 heads, 4 points per level, dropout 0; 900 queries from mixed query selection;
look-forward-twice box refinement, decoder heads shared across layers (one class head, one box
MLP, listed 6 times); contrastive denoising with dn_number 100, label noise 0.5, box noise 1.0.
Loss: sigmoid focal (alpha 0.25) + L1 + GIoU, weights 1 / 5 / 2, matcher costs 2 / 5 / 2, on
the final and 5 auxiliary decoder outputs, the encoder proposals (`_interm`, weights 1 / 5 / 2),
and the denoising outputs (`_dn`, `_dn_i`, weights 1 / 5 / 2, positive queries only).
Postprocess: sigmoid, top 300 over queries x classes. AdamW lr 1e-4, backbone 1e-5 (groups by
"backbone" in the name, the release's 'default' param dicts), weight decay 1e-4, clipping 0.1.

State_dict layout is the release's, aliases included: `class_embed.0..5` and `bbox_embed.0..5`
are one module each, also reachable as `transformer.decoder.class_embed.i` / `bbox_embed.i`;
`transformer.enc_out_class_embed` / `enc_out_bbox_embed` are separate copies; `label_enc` has
dn_labelbook_size + 1 rows (92 for COCO).

Denoising needs `targets` in forward (training only, as the release). Differences from the
release: training without targets runs without denoising (the release would fail) and the
criterion then reports zero `_dn` losses, as the release does in eval.

ENACT (enact=True / EnactConfig): token clustering of the encoder queries (enact.tokens;
docs/detectors-deformable.md), an *extension beyond the ENACT paper*. Extra keys: `transformer.encoder.enact_clustering.<i>.W_prob.*`.
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
from .common.criterion import FocalSetCriterion, _num_boxes
from .deformable_detr import DeformableDETR
from .dino_denoising import DenoisingMeta, dn_matching_indices, prepare_cdn
from .dino_transformer import DINO_EPS, DinoTransformer
from .common.inverse_sigmoid import inverse_sigmoid
from .common.matcher import FocalClassCost, HungarianMatcher
from .common.mlp import MLP
from .common.ms_deform_attn import check_msda, msda_attention_label, set_msda
from .common.nested import batch_images
from .common.position import PositionEmbeddingSine
from .common.postprocess import postprocess_topk_sigmoid
from .common.config import DetectorConfig
from .common.config_checks import check_positive_ints
from .registry import register_detector, preset_factory


@dataclass(frozen=True)
class DinoConfig(DetectorConfig):
    dropout: float = 0.0
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_queries: int = 900
    pe_temperature: float = 20.0
    # deformable-attention core: "op" (registered op, the compiled kernel's memory) | "pytorch" (autograd reference)
    msda: str = "op"
    # denoising
    dn_number: int = 100  # 0 switches denoising off (use_dn=False)
    dn_label_noise_ratio: float = 0.5
    dn_box_noise_scale: float = 1.0
    dn_labelbook_size: int | None = None  # None: num_classes (91 for COCO, as the release)
    # matcher costs, loss weights, focal loss
    set_cost_class: float = 2.0
    cls_loss_coef: float = 1.0
    interm_loss_coef: float = 1.0
    focal_alpha: float = 0.25
    num_select: int = 300
    # optimiser (AdamW)
    lr: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        check_positive_ints(self, ("num_feature_levels", "enc_n_points", "dec_n_points", "num_queries", "num_select"))
        if self.hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 (input_proj uses GroupNorm(32)); got {self.hidden_dim}")
        if self.hidden_dim % self.nheads:
            raise ValueError(f"hidden_dim ({self.hidden_dim}) must be divisible by nheads ({self.nheads})")
        if self.num_feature_levels < 3:
            raise ValueError(f"num_feature_levels must be >= 3 (C3-C5 plus extra levels); got {self.num_feature_levels}")
        if not isinstance(self.dn_number, int) or self.dn_number < 0:
            raise ValueError(f"dn_number must be an int >= 0 (0 = no denoising); got {self.dn_number!r}")
        if not 0.0 <= self.dn_label_noise_ratio <= 1.0:
            raise ValueError(f"dn_label_noise_ratio must be in [0, 1]; got {self.dn_label_noise_ratio}")
        if self.dn_box_noise_scale < 0:
            raise ValueError(f"dn_box_noise_scale must be >= 0; got {self.dn_box_noise_scale}")
        check_msda(self.msda)


def dino_weight_dict(cfg: DinoConfig, use_dn: bool) -> dict[str, float]:
    """The release's weight_dict: main (+ _dn), aux _0.._{n-2} (+ _dn_i), _interm (no dn)."""
    base = {"loss_ce": cfg.cls_loss_coef, "loss_bbox": cfg.bbox_loss_coef, "loss_giou": cfg.giou_loss_coef}
    weights = dict(base)
    if use_dn:
        weights.update({k + "_dn": v for k, v in base.items()})
    clean = dict(weights)
    if cfg.aux_loss:
        for i in range(cfg.dec_layers - 1):
            weights.update({k + f"_{i}": v for k, v in clean.items()})
    weights.update({k + "_interm": v * cfg.interm_loss_coef for k, v in base.items()})
    return weights


class DinoCriterion(FocalSetCriterion):
    """Focal set criterion on the decoder outputs and `interm_outputs` (class-aware, suffix
    `_interm`), plus the denoising losses on the positive dn queries with their fixed assignment
    (suffixes `_dn` and `_dn_i`, normaliser num_boxes * groups). Also logs loss_xy / loss_hw."""

    def loss_boxes(self, outputs, targets, indices, num_boxes, log=True):
        losses = super().loss_boxes(outputs, targets, indices, num_boxes, log)
        from .common.criterion import _src_permutation_idx

        idx = _src_permutation_idx(indices)
        with torch.no_grad():
            src = outputs["pred_boxes"][idx]
            tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], 0).to(src.dtype)
            l1 = (src - tgt).abs()
            losses["loss_xy"] = l1[..., :2].sum() / num_boxes
            losses["loss_hw"] = l1[..., 2:].sum() / num_boxes
        return losses

    def output_sets(self, outputs):
        yield from super().output_sets({k: v for k, v in outputs.items() if k not in ("interm_outputs", "dn_meta")})
        if "interm_outputs" in outputs:
            yield "_interm", outputs["interm_outputs"], False

    def _terms(self, losses: dict, suffix: str, out: dict, targets, indices, num_boxes, log: bool) -> None:
        for name in self.losses:
            terms = getattr(self, f"loss_{name}")(out, targets, indices, num_boxes, log=log)
            losses.update({k + suffix: v for k, v in terms.items()})

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        """In the release's order: main matching, the final layer's dn losses, its matched losses,
        then per auxiliary layer its matched and its dn losses, then the encoder proposals. Every
        term's graph stays alive until backward, so the step's peak is the transient of the last
        term on top of all the others: the same order gives the release's peak."""
        device = outputs["pred_logits"].device
        num_boxes = _num_boxes(targets, device)
        meta: DenoisingMeta | None = outputs.get("dn_meta")
        sets = list(self.output_sets(outputs))  # ("", final, True), ("_i", aux i, False)..., ("_interm", ...)
        with_dn = meta is not None and meta.outputs is not None
        if with_dn:
            dn_boxes = _num_boxes(targets, device) * meta.num_groups
            dn_indices = dn_matching_indices(targets, meta, device)
            dn_sets = [meta.outputs] + list(meta.outputs.get("aux_outputs", []))

        def dn_terms(losses: dict, level: int, suffix: str) -> None:
            if with_dn:
                self._terms(losses, suffix, dn_sets[level], targets, dn_indices, dn_boxes, log=False)
            else:  # zero dn terms, as the release without denoising outputs
                zero = torch.zeros((), device=device)
                losses.update({k + suffix: zero for k in ("loss_bbox", "loss_giou", "loss_ce", "loss_xy", "loss_hw",
                                                         "cardinality_error")})

        losses: dict[str, Tensor] = {}
        for level, (suffix, out, log) in enumerate(sets):
            indices = [(i.to(device), j.to(device)) for i, j in self.matcher(out, targets)]
            if suffix == "":
                dn_terms(losses, 0, "_dn")
            self._terms(losses, suffix, out, targets, indices, num_boxes, log)
            if suffix not in ("", "_interm"):
                dn_terms(losses, level, "_dn" + suffix)
        return losses


class DINO(Detector):
    family = "dino"

    def __init__(self, cfg: DinoConfig, num_classes: int = 91, enact_config=None, pretrained_backbone: bool = False):
        super().__init__()
        weights_path = backbone_weights_path(pretrained_backbone, cfg.backbone_weights, cfg.backbone)
        self._set_recipe(cfg, num_classes, enact_config, cfg.lr)
        self.num_queries = cfg.num_queries
        self.num_feature_levels = cfg.num_feature_levels
        hidden = self.hidden_dim = cfg.hidden_dim
        labelbook = num_classes if cfg.dn_labelbook_size is None else cfg.dn_labelbook_size

        # registration order = the release's state_dict order
        self.transformer = DinoTransformer(
            hidden, cfg.nheads, cfg.num_queries, cfg.enc_layers, cfg.dec_layers, cfg.dim_feedforward, cfg.dropout,
            "relu", cfg.num_feature_levels, cfg.enc_n_points, cfg.dec_n_points, enact_config, cfg.enact_layers)
        self.label_enc = nn.Embedding(labelbook + 1, hidden)
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
        self.backbone = Joiner(body, PositionEmbeddingSine(hidden // 2, temperature=cfg.pe_temperature,
                                                           normalize=True))

        class_embed = nn.Linear(hidden, num_classes)
        bbox_embed = MLP(hidden, hidden, 4, 3)
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - 0.01) / 0.01))
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        # one head of each kind, shared by every decoder layer (dec_pred_*_embed_share)
        self.bbox_embed = nn.ModuleList([bbox_embed for _ in range(cfg.dec_layers)])
        self.class_embed = nn.ModuleList([class_embed for _ in range(cfg.dec_layers)])
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        # the encoder-proposal heads are copies (two_stage_*_embed_share False)
        self.transformer.enc_out_bbox_embed = copy.deepcopy(bbox_embed)
        self.transformer.enc_out_class_embed = copy.deepcopy(class_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        set_msda(self, cfg.msda)  # every MSDeformAttn, the clustered encoder layers' included
        self.attention = msda_attention_label(cfg.msda)

    multiscale_features = DeformableDETR.multiscale_features

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        images, mask = batch_images(images, mask)  # (B, 3, H, W), (B, H, W)
        srcs, masks, pos = self.multiscale_features(images, mask)
        cfg = self.cfg
        meta = None
        dn_content = dn_anchors = attn_mask = None
        if self.training and cfg.dn_number > 0 and targets is not None:
            dn_content, dn_anchors, attn_mask, meta = prepare_cdn(
                targets, cfg.dn_number, cfg.dn_label_noise_ratio, cfg.dn_box_noise_scale, self.num_queries,
                self.num_classes, self.hidden_dim, self.label_enc)
        hs, references, hs_enc, ref_enc, init_box_proposal = self.transformer(
            srcs, masks, pos, dn_anchors, dn_content, attn_mask)  # hs: n_dec x (B, pad+Q, C)
        hs[0] += self.label_enc.weight[0, 0] * 0.0  # the release's guard (in place): label_enc always in the graph

        coords = torch.stack([(box_embed(h) + inverse_sigmoid(ref, DINO_EPS)).sigmoid()
                              for box_embed, h, ref in zip(self.bbox_embed, hs, references[:-1])])
        classes = torch.stack([cls_embed(h) for cls_embed, h in zip(self.class_embed, hs)])
        if meta is not None and meta.pad_size > 0:
            pad = meta.pad_size
            meta.outputs = {"pred_logits": classes[-1, :, :pad], "pred_boxes": coords[-1, :, :pad]}
            if self.aux_loss:
                meta.outputs["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                               for a, b in zip(classes[:-1, :, :pad], coords[:-1, :, :pad])]
            classes, coords = classes[:, :, pad:], coords[:, :, pad:]
        out = {"pred_logits": classes[-1], "pred_boxes": coords[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(classes[:-1], coords[:-1])]
        interm_class = self.transformer.enc_out_class_embed(hs_enc[-1])
        out["interm_outputs"] = {"pred_logits": interm_class, "pred_boxes": ref_enc[-1]}
        out["interm_outputs_for_matching_pre"] = {"pred_logits": interm_class, "pred_boxes": init_box_proposal}
        out["dn_meta"] = meta
        return out

    # -- training / evaluation -------------------------------------------------------------------
    def build_criterion(self) -> DinoCriterion:
        cfg = self.cfg
        matcher = HungarianMatcher(cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou,
                                   class_cost=FocalClassCost(alpha=cfg.focal_alpha, gamma=2.0))
        return DinoCriterion(self.num_classes, matcher, dino_weight_dict(cfg, cfg.dn_number > 0),
                             focal_alpha=cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        return postprocess_topk_sigmoid(outputs, target_sizes, num_select=self.cfg.num_select)

    def enact_modules(self) -> Iterator[nn.Module]:
        clustering = self.transformer.encoder.enact_clustering
        if clustering is not None:
            for key in sorted(clustering, key=int):
                yield clustering[key]




_TINY = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2, dim_feedforward=64,
             enc_n_points=2, dec_n_points=2, num_queries=20, dn_number=2, num_select=50)
PRESETS = {
    "dino_r50_4scale": (DinoConfig(), "DINO 4-scale, ResNet-50, 6+6 layers, 900 queries, denoising (46.9M params)"),
    "dino_tiny": (DinoConfig(**_TINY), "tiny DINO for CPU tests: resnet18, width 64, 2+2 layers, 20 queries"),
}

for _name, (_cfg, _doc) in PRESETS.items():
    register_detector(_name, family="dino", tiny=_name.endswith("_tiny"), overrides=DinoConfig,
                      description=_doc)(preset_factory(DINO, _cfg))
