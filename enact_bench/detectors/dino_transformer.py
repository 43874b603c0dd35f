"""DINO's deformable transformer: mixed query selection and look-forward-twice decoding.

Module and parameter names follow IDEA-Research/DINO `models/dino/deformable_transformer.py`
(4-scale R50 configuration: two_stage_type 'standard', embed_init_tgt, deformable encoder and
decoder, decoder self-attention 'sa', module order sa -> ca -> ffn), so `transformer.*` keys of
its checkpoints load strictly:

    level_embed (L, C); encoder.layers.i.*   (the Deformable DETR encoder layer, reused)
    decoder.layers.i.*                       cross_attn, norm1, self_attn, norm2, linear1/2, norm3
    decoder.norm, decoder.ref_point_head     LayerNorm; MLP(2C -> C -> C)
    decoder.bbox_embed.i / class_embed.i     the detector's heads, shared (aliases)
    tgt_embed (Q, C)                         learned content queries
    enc_output, enc_output_norm              proposal projection of the encoder memory
    enc_out_class_embed, enc_out_bbox_embed  proposal heads (copies of the detector's heads)

Mixed query selection: the top-Q encoder tokens by their best class logit give the anchors
(detached, unsigmoided boxes), the content queries are the learned `tgt_embed`. The decoder
refines anchors layer by layer; the boxes it returns are not detached (look forward twice), the
anchors it feeds the next layer are. Denoising queries are put in front of the matching queries.

ENACT (docs/detectors-deformable.md; an extension beyond the paper): the encoder is the Deformable DETR encoder,
with token clustering via enact.tokens when built with an EnactConfig; memory keeps full length.
Layout: batch-first (B, S, C) throughout (the release runs its decoder sequence-first; same math).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .deformable_transformer import (DeformableDecoderLayer, DeformableEncoder, DeformableEncoderLayer, clones,
                                     inverse_sigmoid, valid_ratio)
from .common.mlp import MLP
from .common.ms_deform_attn import LevelShapes, MSDeformAttn, level_start_index_of

DINO_EPS = 1e-3  # the release's inverse_sigmoid eps (util.misc)


def sine_embed_boxes(boxes: Tensor, d_model: int = 256) -> Tensor:
    """(N1, N2, 4) sigmoided cxcywh (the decoder passes (Q, B, 4)) -> (N1, N2, 2 * d_model): sine embedding of y, x, w, h (that order),
    d_model / 2 features each at temperature 10000 (the release fixes 128, i.e. d_model 256)."""
    feats = d_model // 2
    scale = 2 * math.pi
    dim_t = torch.arange(feats, dtype=torch.float32, device=boxes.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / feats)

    def embed(coord: Tensor) -> Tensor:  # (N1, N2) -> (N1, N2, feats)
        pos = coord[:, :, None] * scale / dim_t
        return torch.stack((pos[:, :, 0::2].sin(), pos[:, :, 1::2].cos()), dim=3).flatten(2)

    return torch.cat([embed(boxes[..., 1]), embed(boxes[..., 0]), embed(boxes[..., 2]), embed(boxes[..., 3])], -1)


class DinoDecoderLayer(DeformableDecoderLayer):
    """Deformable DETR's decoder layer (same modules and names) with an attention mask on the
    self-attention (denoising groups) and the release's dropout 0. Sequence-first (Q, B, C) as
    the release's layer: with B > 1 the deformable attention then receives batch-first views that
    its projections copy, and the release's training keeps those copies; so does ours."""

    def forward(self, tgt, query_pos, reference_points, src, src_spatial_shapes, level_start_index=None,
                src_padding_mask=None, self_attn_mask: Tensor | None = None):
        """tgt, query_pos (Q, B, C); reference_points (Q, B, L, 4); src (B, S, C) -> (Q, B, C)."""
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, tgt, attn_mask=self_attn_mask)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.cross_attn((tgt + query_pos).transpose(0, 1), reference_points.transpose(0, 1).contiguous(),
                               src, src_spatial_shapes, level_start_index, src_padding_mask).transpose(0, 1)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.forward_ffn(tgt)


class DinoDecoder(nn.Module):
    def __init__(self, decoder_layer: nn.Module, num_layers: int, d_model: int):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.d_model = d_model
        self.norm = nn.LayerNorm(d_model)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.bbox_embed = None  # set by the detector (shared heads)
        self.class_embed = None

    def forward(self, tgt, anchors_unsig, memory, spatial_shapes, level_start_index, valid_ratios,
                padding_mask=None, self_attn_mask=None):
        """-> hs: n_dec tensors (B, Q, C) normed, references: n_dec + 1 tensors (B, Q, 4) sigmoided
        (not detached after 0). Lists, as the release: stacking them would keep a copy of every
        layer's output for backward besides the layers' own."""
        output = tgt.transpose(0, 1)                    # (B, Q, C) -> (Q, B, C): sequence-first as the release
        reference = anchors_unsig.transpose(0, 1).sigmoid()   # (Q, B, 4)
        refs, intermediate = [reference], []
        for lid, layer in enumerate(self.layers):
            ref_input = reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[None]  # (Q, B, L, 4)
            query_pos = self.ref_point_head(sine_embed_boxes(ref_input[:, :, 0], self.d_model))
            output = layer(output, query_pos, ref_input, memory, spatial_shapes, level_start_index, padding_mask,
                           self_attn_mask)
            # look forward twice: the refined box keeps its gradient for this layer's loss (refs),
            # the next layer's anchor is detached
            # named steps, as the release: they stay alive until the next layer replaces them
            reference_unsig = inverse_sigmoid(reference, DINO_EPS)    # (Q, B, 4)
            delta_unsig = self.bbox_embed[lid](output)
            outputs_unsig = delta_unsig + reference_unsig
            new_reference = outputs_unsig.sigmoid()
            reference = new_reference.detach()
            refs.append(new_reference)
            intermediate.append(self.norm(output))
        return [h.transpose(0, 1) for h in intermediate], [r.transpose(0, 1) for r in refs]   # batch-first views


class DinoTransformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_queries=900, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.0, activation="relu", num_feature_levels=4, enc_n_points=4,
                 dec_n_points=4, enact_config=None, enact_layers=None):
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels
        self.num_decoder_layers = num_decoder_layers
        enc_layer = DeformableEncoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead,
                                           enc_n_points)
        self.encoder = DeformableEncoder(enc_layer, num_encoder_layers)
        dec_layer = DinoDecoderLayer(d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead,
                                     dec_n_points)
        self.decoder = DinoDecoder(dec_layer, num_decoder_layers, d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.tgt_embed = nn.Embedding(num_queries, d_model)
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.enc_out_class_embed: nn.Module | None = None  # set by the detector
        self.enc_out_bbox_embed: nn.Module | None = None
        self._reset_parameters()
        if enact_config is not None:  # after the release's init: same random values with and without
            self.encoder.enable_enact(enact_config, enact_layers, d_model)

    def _reset_parameters(self):
        # the release draws tgt_embed from N(0, 1) first, then xavier overwrites every matrix
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def flatten_levels(self, srcs, masks, pos_embeds):
        """Per-level (B, C, H, W) maps -> (B, S, C) tokens, (B, S) mask, (B, S, C) positions, shapes, (B, L, 2)."""
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((h, w))
            src_flat.append(src.flatten(2).transpose(1, 2))  # (B, C, H, W) -> (B, HW, C)
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)
        return torch.cat(src_flat, 1), torch.cat(mask_flat, 1), torch.cat(pos_flat, 1), shapes, valid_ratios

    @staticmethod
    def encoder_proposals(memory: Tensor, padding_mask: Tensor, shapes) -> tuple[Tensor, Tensor]:
        """One proposal per token: its pixel centre, size 0.05 * 2^level; invalid ones -> inf, memory 0.
        -> memory (B, S, C), proposals unsigmoided (B, S, 4)."""
        n = memory.shape[0]
        proposals, cur = [], 0
        for lvl, (h, w) in enumerate(shapes):
            mask_l = padding_mask[:, cur:cur + h * w].view(n, h, w)
            valid_h = torch.sum(~mask_l[:, :, 0], 1)
            valid_w = torch.sum(~mask_l[:, 0, :], 1)
            grid_y, grid_x = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                                            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                                            indexing="ij")
            grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2)
            scale = torch.stack([valid_w, valid_h], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            cur += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(padding_mask.unsqueeze(-1), float("inf"))
        proposals = proposals.masked_fill(~valid, float("inf"))
        memory = memory.masked_fill(padding_mask.unsqueeze(-1), 0.0).masked_fill(~valid, 0.0)
        return memory, proposals

    def forward(self, srcs, masks, pos_embeds, dn_anchors=None, dn_content=None, attn_mask=None):
        """-> hs: n_dec x (B, pad+Q, C), references: (n_dec+1) x (B, pad+Q, 4) (lists),
        hs_enc (1, B, Q, C), ref_enc (1, B, Q, 4) sigmoided, init_box_proposal (B, Q, 4) sigmoided."""
        src, mask, pos, shapes, valid_ratios = self.flatten_levels(srcs, masks, pos_embeds)
        shapes = LevelShapes(shapes)  # + the op's (L, 2) / (L,) index tensors, made once per forward when used
        level_start_index = level_start_index_of(shapes)
        memory = self.encoder(src, shapes, level_start_index, valid_ratios, pos, mask)  # (B, S, C), full length

        bs = memory.shape[0]
        output_memory, output_proposals = self.encoder_proposals(memory, mask, shapes)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        enc_class = self.enc_out_class_embed(output_memory)  # (B, S, K)
        enc_coord_unsig = self.enc_out_bbox_embed(output_memory) + output_proposals  # (B, S, 4)
        topk = torch.topk(enc_class.max(-1)[0], self.num_queries, dim=1)[1]  # (B, Q)
        anchors_undetached = torch.gather(enc_coord_unsig, 1, topk.unsqueeze(-1).repeat(1, 1, 4))
        init_box_proposal = torch.gather(output_proposals, 1, topk.unsqueeze(-1).repeat(1, 1, 4)).sigmoid()
        tgt_undetached = torch.gather(output_memory, 1, topk.unsqueeze(-1).repeat(1, 1, self.d_model))
        anchors = anchors_undetached.detach()
        queries = self.tgt_embed.weight.unsqueeze(0).repeat(bs, 1, 1)  # (B, Q, C) learned content queries
        tgt = queries
        if dn_anchors is not None:   # `queries` stays alive beside the concatenation, as in the release
            anchors = torch.cat([dn_anchors, anchors], 1)
            tgt = torch.cat([dn_content, queries], 1)

        hs, references = self.decoder(tgt, anchors, memory, shapes, level_start_index, valid_ratios, mask,
                                      attn_mask)
        return hs, references, tgt_undetached.unsqueeze(0), anchors_undetached.sigmoid().unsqueeze(0), \
            init_box_proposal
