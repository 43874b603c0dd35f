"""The deformable transformer of Deformable DETR (encoder, decoder, two-stage proposals).

Module names, parameter names and initialisation follow fundamentalvision/Deformable-DETR's
`models/deformable_transformer.py`, so `transformer.*` keys of its checkpoints load strictly:

    level_embed                     (L, C)
    encoder.layers.i.self_attn      MSDeformAttn; norm1; linear1; linear2; norm2
    decoder.layers.i.cross_attn     MSDeformAttn; norm1; self_attn (nn.MultiheadAttention); norm2;
                                    linear1; linear2; norm3
    reference_points                Linear(C, 2)            (single-stage only)
    enc_output, enc_output_norm, pos_trans, pos_trans_norm  (two-stage only)

ENACT (docs/detectors-deformable.md; an extension beyond the paper): when the encoder is built with an
`EnactConfig`, each selected layer gets a `enact.tokens.TokenClustering` in
`encoder.enact_clustering[str(i)]` (its learned `W_prob` is `encoder.enact_clustering.<i>.W_prob`).
The layer then runs on cluster tokens against the full-resolution value map and every token gets
its cluster's update; the memory handed to the decoder keeps its full length.

Layouts: tokens are batch-first, (B, S, C), levels consecutive, each level row-major.
Spatial shapes travel as a list of (H, W) Python ints (see ms_deform_attn.shapes_as_list).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from enact_bench.detectors.common.activation import activation_fn
from enact_bench.detectors.common.enact_layers import enact_layers as enact_layer_indices
from enact_bench.detectors.common.inverse_sigmoid import inverse_sigmoid  # noqa: F401 -- used below and re-exported
from enact_bench.detectors.common.ms_deform_attn import LevelShapes, MSDeformAttn, level_start_index_of, shapes_as_list


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def valid_ratio(mask: Tensor) -> Tensor:
    """(B, H, W) padding mask -> (B, 2) fraction of valid columns and rows, as (w, h)."""
    _, h, w = mask.shape
    valid_h = torch.sum(~mask[:, :, 0], 1)
    valid_w = torch.sum(~mask[:, 0, :], 1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)


def encoder_reference_points(spatial_shapes, valid_ratios: Tensor, device) -> Tensor:
    """Pixel centres of every level, normalised by the valid region -> (B, S, L, 2) as (x, y)."""
    refs = []
    for lvl, (h, w) in enumerate(shapes_as_list(spatial_shapes)):
        ref_y, ref_x = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                                      torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                                      indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
        refs.append(torch.stack((ref_x, ref_y), -1))  # (B, HW, 2)
    ref = torch.cat(refs, 1)  # (B, S, 2)
    return ref[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention + FFN, post-norm (the original's encoder layer).

    forward(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask, value=None)
    `value` (B, S, C): the full-resolution tokens attended to; default `src`. Passing fewer query
    tokens in `src` (with their `pos` and `reference_points`) than `value` has is what ENACT token
    clustering does; every operation here is per query token, so each query's output does not
    depend on which other queries are present.
    """

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu",
                 n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward_ffn(self, src: Tensor) -> Tensor:
        src2 = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index=None,
                padding_mask=None, value: Tensor | None = None) -> Tensor:
        value = src if value is None else value
        query = src if pos is None else src + pos
        src2 = self.self_attn(query, reference_points, value, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(src2))
        return self.forward_ffn(src)


class DeformableEncoder(nn.Module):
    """A stack of encoder layers; optional ENACT token clustering per layer.

    `enact_clustering`: None, or nn.ModuleDict {str(layer index): TokenClustering} after
    `enable_enact(config, layers)`.
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.enact_clustering: nn.ModuleDict | None = None

    def enable_enact(self, config, layers: Sequence[int] | None = None, d_model: int | None = None) -> None:
        """Add ENACT token clustering (enact.tokens.TokenClustering) to the chosen layers (all by default)."""
        from enact.tokens import TokenClustering  # the plug-in; imports torch only

        d_model = d_model if d_model is not None else self.layers[0].norm1.normalized_shape[0]
        chosen = enact_layer_indices(self.num_layers, layers)
        self.enact_clustering = nn.ModuleDict({str(i): TokenClustering(d_model, config) for i in chosen})

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios, device):
        return encoder_reference_points(spatial_shapes, valid_ratios, device)

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        shapes = shapes_as_list(spatial_shapes)
        output = src
        reference_points = encoder_reference_points(shapes, valid_ratios, src.device)
        for i, layer in enumerate(self.layers):
            clustering = None
            if self.enact_clustering is not None and str(i) in self.enact_clustering:
                clustering = self.enact_clustering[str(i)]
            if clustering is None:
                output = layer(output, pos, reference_points, shapes, level_start_index, padding_mask)
            else:
                full = output

                def run_layer(q_src, q_pos, q_ref, _layer=layer, _full=full):
                    return _layer(q_src, q_pos, q_ref, shapes, level_start_index, padding_mask, value=_full)

                output = clustering(run_layer, output, pos, reference_points, shapes, padding_mask)
        return output

    def enact_stats(self) -> list[dict]:
        if self.enact_clustering is None:
            return []
        return [self.enact_clustering[k].last_stats for k in sorted(self.enact_clustering, key=int)]


class DeformableDecoderLayer(nn.Module):
    """Self-attention (nn.MultiheadAttention) -> deformable cross-attention -> FFN, post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu",
                 n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward_ffn(self, tgt):
        tgt2 = self.linear2(self.dropout3(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(tgt2))

    def forward(self, tgt, query_pos, reference_points, src, src_spatial_shapes, level_start_index=None,
                src_padding_mask=None):
        q = k = tgt if query_pos is None else tgt + query_pos
        # nn.MultiheadAttention is sequence-first: (B, Q, C) -> (Q, B, C) and back
        tgt2 = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1))[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        query = tgt if query_pos is None else tgt + query_pos
        tgt2 = self.cross_attn(query, reference_points, src, src_spatial_shapes, level_start_index, src_padding_mask)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.forward_ffn(tgt)


class DeformableDecoder(nn.Module):
    """Decoder stack. `bbox_embed` / `class_embed` are set by the detector (as in the original:
    box refinement and two-stage share the detector's heads, which therefore also appear under
    `transformer.decoder.` in the state_dict)."""

    def __init__(self, decoder_layer: nn.Module, num_layers: int, return_intermediate: bool = False):
        super().__init__()
        self.layers = clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.bbox_embed = None
        self.class_embed = None

    def forward(self, tgt, reference_points, src, src_spatial_shapes, src_level_start_index, src_valid_ratios,
                query_pos=None, src_padding_mask=None):
        output = tgt
        intermediate, intermediate_refs = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = reference_points[:, :, None] * torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None]
            elif reference_points.shape[-1] == 2:
                ref_input = reference_points[:, :, None] * src_valid_ratios[:, None]
            else:
                raise ValueError(f"reference_points last dim must be 2 or 4, got {reference_points.shape[-1]}")
            output = layer(output, query_pos, ref_input, src, src_spatial_shapes, src_level_start_index,
                           src_padding_mask)
            if self.bbox_embed is not None:  # iterative box refinement
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_ref = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                    new_ref = new_ref.sigmoid()
                reference_points = new_ref.detach()
            if self.return_intermediate:
                intermediate.append(output)
                intermediate_refs.append(reference_points)
        if self.return_intermediate:
            return torch.stack(intermediate), torch.stack(intermediate_refs)
        return output, reference_points


class DeformableTransformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, activation="relu", return_intermediate_dec=True, num_feature_levels=4,
                 dec_n_points=4, enc_n_points=4, two_stage=False, two_stage_num_proposals=300,
                 enact_config=None, enact_layers=None):
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc_layer = DeformableEncoderLayer(d_model, dim_feedforward, dropout, activation,
                                           num_feature_levels, nhead, enc_n_points)
        self.encoder = DeformableEncoder(enc_layer, num_encoder_layers)
        dec_layer = DeformableDecoderLayer(d_model, dim_feedforward, dropout, activation,
                                           num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableDecoder(dec_layer, num_decoder_layers, return_intermediate_dec)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()
        # ENACT modules are added after the original's init so that, seeded alike, the original
        # parameters get the same random values with and without ENACT.
        if enact_config is not None:
            self.encoder.enable_enact(enact_config, enact_layers, d_model)

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals: Tensor, temperature: int = 10000) -> Tensor:
        """(N, K, 4) unsigmoided boxes -> (N, K, 2 * d_model) sine embedding, d_model / 2 features per
        coordinate (the release fixes 128, i.e. it supports d_model = 256 only; same numbers there)."""
        num_pos_feats = self.d_model // 2
        scale = 2 * math.pi
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        proposals = proposals.sigmoid() * scale
        pos = proposals[:, :, :, None] / dim_t  # (N, K, 4, F)
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(self, memory, memory_padding_mask, spatial_shapes):
        """One proposal per encoder token: its pixel centre with a level-dependent size."""
        n = memory.shape[0]
        proposals, cur = [], 0
        for lvl, (h, w) in enumerate(shapes_as_list(spatial_shapes)):
            mask_l = memory_padding_mask[:, cur:cur + h * w].view(n, h, w, 1)
            valid_h = torch.sum(~mask_l[:, :, 0, 0], 1)
            valid_w = torch.sum(~mask_l[:, 0, :, 0], 1)
            grid_y, grid_x = torch.meshgrid(torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                                            torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                                            indexing="ij")
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # (H, W, 2)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            cur += h * w
        output_proposals = torch.cat(proposals, 1)  # (N, S, 4)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
        output_proposals = output_proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), 0.0)
        output_memory = output_memory.masked_fill(~valid, 0.0)
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    def flatten_levels(self, srcs: Sequence[Tensor], masks: Sequence[Tensor], pos_embeds: Sequence[Tensor]):
        """Per-level (B, C, H, W) maps -> one (B, S, C) sequence, masks, level-embedded positions."""
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((h, w))
            src_flat.append(src.flatten(2).transpose(1, 2))  # (B, C, H, W) -> (B, HW, C)
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        valid_ratios = torch.stack([valid_ratio(m) for m in masks], 1)  # (B, L, 2)
        return torch.cat(src_flat, 1), torch.cat(mask_flat, 1), torch.cat(pos_flat, 1), shapes, valid_ratios

    def forward(self, srcs, masks, pos_embeds, query_embed=None):
        if not self.two_stage and query_embed is None:
            raise ValueError("single-stage DeformableTransformer needs query_embed (num_queries, 2 * d_model)")
        src_flatten, mask_flatten, lvl_pos_embed_flatten, shapes, valid_ratios = \
            self.flatten_levels(srcs, masks, pos_embeds)
        shapes = LevelShapes(shapes)  # + the op's (L, 2) / (L,) index tensors, made once per forward when used
        level_start_index = level_start_index_of(shapes)

        memory = self.encoder(src_flatten, shapes, level_start_index, valid_ratios,
                              lvl_pos_embed_flatten, mask_flatten)  # (B, S, C), full length

        bs, _, c = memory.shape
        if self.two_stage:
            output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask_flatten, shapes)
            # the extra (last) heads of the decoder score every encoder token as a proposal
            enc_outputs_class = self.decoder.class_embed[self.decoder.num_layers](output_memory)
            enc_outputs_coord_unact = self.decoder.bbox_embed[self.decoder.num_layers](output_memory) + output_proposals
            topk = self.two_stage_num_proposals
            topk_proposals = torch.topk(enc_outputs_class[..., 0], topk, dim=1)[1]
            topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_proposals.unsqueeze(-1).repeat(1, 1, 4))
            topk_coords_unact = topk_coords_unact.detach()
            reference_points = topk_coords_unact.sigmoid()
            init_reference_out = reference_points
            pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(topk_coords_unact)))
            query_embed, tgt = torch.split(pos_trans_out, c, dim=2)
        else:
            # (Q, 2C) -> (B, Q, C) each. The release's expand when training (views of the parameter:
            # at batch 1 nothing is copied, so nothing extra is kept for backward); repeat under
            # no_grad, where a view of a parameter reports requires_grad without a grad_fn, which
            # module hooks (FlopCounterMode's module tracker) reject. Same numbers.
            query_embed, tgt = torch.split(query_embed, c, dim=1)
            if torch.is_grad_enabled():
                query_embed = query_embed.unsqueeze(0).expand(bs, -1, -1)
                tgt = tgt.unsqueeze(0).expand(bs, -1, -1)
            else:
                query_embed = query_embed.unsqueeze(0).repeat(bs, 1, 1)
                tgt = tgt.unsqueeze(0).repeat(bs, 1, 1)
            reference_points = self.reference_points(query_embed).sigmoid()
            init_reference_out = reference_points

        hs, inter_references = self.decoder(tgt, reference_points, memory, shapes, level_start_index, valid_ratios,
                                            query_embed, mask_flatten)
        if self.two_stage:
            return hs, init_reference_out, inter_references, enc_outputs_class, enc_outputs_coord_unact
        return hs, init_reference_out, inter_references, None, None
