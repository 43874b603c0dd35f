"""Anchor DETR's transformer (megvii-research/AnchorDETR), single feature level, RCDA attention.

Key layout as the original `Transformer`: encoder_layers.i.{self_attn, norm1, ffn}, (with ENACT:
encoder_layers.i.ENACT.W_prob), decoder_layers.i.{cross_attn, norm1, self_attn, norm2, ffn},
pattern, position, adapt_pos2d, adapt_pos1d, class_embed.i / bbox_embed.i (one head shared by all
decoder layers, listed once per layer as in the original's state_dict).

Queries: num_pattern x num_position anchor points (learned 2-D points in [0, 1]) with a learned
pattern embedding; every decoder layer predicts boxes relative to the same anchors.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchor_enact import AnchorEnactPooling
from .common.enact_layers import enact_layers as enact_layer_indices
from .common.inverse_sigmoid import inverse_sigmoid
from .common.mlp import MLP
from .rcda import MultiheadRCDA, mask_to_positions, pos2posemb1d, pos2posemb2d


class FFN(nn.Module):
    """linear1 -> relu -> linear2, residual, LayerNorm (norm2, the original's name)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(x + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(x))))))


def _repeat_pos(posemb_row: Tensor, posemb_col: Tensor, h: int, w: int, lean: bool) -> tuple[Tensor, Tensor]:
    """(N, W, C), (N, H, C) -> broadcastable (N, 1, W, C), (N, H, 1, C); the original repeats
    them to (N, H, W, C) in every layer (two map-sized transients), which `lean` skips."""
    if lean:
        return posemb_row.unsqueeze(1), posemb_col.unsqueeze(2)
    return posemb_row.unsqueeze(1).repeat(1, h, 1, 1), posemb_col.unsqueeze(2).repeat(1, 1, w, 1)


class AnchorEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, nhead: int, enact_config=None,
                 lean: bool = False):
        super().__init__()
        self.lean = lean
        if enact_config is not None:   # registered first, as in the release
            self.ENACT = AnchorEnactPooling(d_model, enact_config)
        self.self_attn = MultiheadRCDA(d_model, nhead, dropout=dropout, lean=lean)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, src: Tensor, mask: Tensor, posemb_row: Tensor, posemb_col: Tensor) -> Tensor:
        """src (N, H, W, C); mask (N, H, W); posemb_row (N, W, C); posemb_col (N, H, C)."""
        n, h, w, c = src.shape
        pos_row, pos_col = _repeat_pos(posemb_row, posemb_col, h, w, self.lean or hasattr(self, "ENACT"))
        k_row = src + pos_row                                         # (N, H, W, C)
        k_col = src + pos_col                                         # (N, H, W, C)
        if hasattr(self, "ENACT"):
            pooled_row, pooled_col, pooled_v = self.ENACT(k_row.reshape(n, h * w, c),
                                                          k_col.reshape(n, h * w, c),
                                                          src.reshape(n, h * w, c), mask)
            src2 = self.self_attn.forward_enact(pooled_row, pooled_col, k_row, k_col, pooled_v)
        elif self.lean:   # the queries are views of the keys: two map-sized tensors fewer kept
            src2 = self.self_attn(k_row.reshape(n, h * w, c), k_col.reshape(n, h * w, c),
                                  k_row, k_col, src, key_padding_mask=mask).reshape(n, h, w, c)
        else:   # the original adds the positions again for the queries: separate tensors, each kept
            src2 = self.self_attn((src + pos_row).reshape(n, h * w, c), (src + pos_col).reshape(n, h * w, c),
                                  k_row, k_col, src, key_padding_mask=mask).reshape(n, h, w, c)
        src = self.norm1(src + self.dropout1(src2))
        return self.ffn(src)


class AnchorDecoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, dropout: float, nhead: int, lean: bool = False):
        super().__init__()
        self.lean = lean
        self.cross_attn = MultiheadRCDA(d_model, nhead, dropout=dropout, lean=lean)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = FFN(d_model, d_ffn, dropout)

    def forward(self, tgt: Tensor, reference_points: Tensor, memory: Tensor, mask: Tensor,
                adapt_pos2d: nn.Module, adapt_pos1d: nn.Module, posemb_row: Tensor,
                posemb_col: Tensor) -> Tensor:
        """tgt (N, Q, C); reference_points (N, Q, 2); memory (N, H, W, C); mask (N, H, W)."""
        c = tgt.shape[-1]
        query_pos = adapt_pos2d(pos2posemb2d(reference_points, c // 2))
        q = (tgt + query_pos).transpose(0, 1)                            # (Q, N, C)
        # need_weights=True as the original: explicit softmax, (N*heads, Q, Q) weights kept for
        # backward; lean: False -> the fused SDPA kernel, same numbers, weights never stored
        tgt2 = self.self_attn(q, q, tgt.transpose(0, 1), need_weights=not self.lean)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(tgt2))

        query_pos_x = adapt_pos1d(pos2posemb1d(reference_points[..., 0], c))
        query_pos_y = adapt_pos1d(pos2posemb1d(reference_points[..., 1], c))
        pos_row, pos_col = _repeat_pos(posemb_row, posemb_col, memory.shape[1], memory.shape[2], self.lean)
        k_row = memory + pos_row
        k_col = memory + pos_col
        tgt2 = self.cross_attn(tgt + query_pos_x, tgt + query_pos_y, k_row, k_col, memory,
                               key_padding_mask=mask)                   # (N, Q, C)
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        return self.ffn(tgt)


class AnchorTransformer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.0,
                 num_query_position: int = 300, num_query_pattern: int = 3, num_classes: int = 91,
                 enact_config=None, enact_layers: list[int] | None = None, lean: bool = False):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        layers, chosen = [], set(enact_layer_indices(num_encoder_layers, enact_layers))
        for i in range(num_encoder_layers):
            cfg = enact_config if i in chosen else None
            layers.append(AnchorEncoderLayer(d_model, dim_feedforward, dropout, nhead, cfg, lean))
        self.encoder_layers = nn.ModuleList(layers)
        self.encoder_layers_level = nn.ModuleList()   # one feature level: none (as the original)
        decoder_layer = AnchorDecoderLayer(d_model, dim_feedforward, dropout, nhead, lean)
        self.decoder_layers = nn.ModuleList(copy.deepcopy(decoder_layer) for _ in range(num_decoder_layers))
        self.num_pattern = num_query_pattern
        self.pattern = nn.Embedding(num_query_pattern, d_model)
        self.num_position = num_query_position
        self.position = nn.Embedding(num_query_position, 2)
        self.adapt_pos2d = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.adapt_pos1d = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.num_layers = num_decoder_layers
        self.lean = lean

        class_embed = nn.Linear(d_model, num_classes)
        bbox_embed = MLP(d_model, d_model, 4, 3)
        prior_prob = 0.01
        nn.init.constant_(class_embed.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
        nn.init.uniform_(self.position.weight, 0, 1)
        # one head shared by every decoder layer, registered once per layer (original layout)
        self.class_embed = nn.ModuleList([class_embed] * num_decoder_layers)
        self.bbox_embed = nn.ModuleList([bbox_embed] * num_decoder_layers)

    def forward(self, src: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """src (N, C, H, W); mask (N, H, W). Returns class logits (layers, N, P*Q, K) and boxes
        (layers, N, P*Q, 4) as normalised cx cy w h."""
        n, c, h, w = src.shape
        reference_points = self.position.weight.unsqueeze(0).repeat(n, self.num_pattern, 1)   # (N, P*Q, 2)
        tgt = self.pattern.weight.reshape(1, self.num_pattern, 1, c).repeat(n, 1, self.num_position, 1)
        tgt = tgt.reshape(n, self.num_pattern * self.num_position, c)                           # (N, P*Q, C)

        if not self.lean:   # the original repeats the mask over its (here: one) feature levels: a copy
            mask = mask.clone()
        pos_col, pos_row = mask_to_positions(mask)                       # (N, H), (N, W)
        posemb_row = self.adapt_pos1d(pos2posemb1d(pos_row, c))          # (N, W, C)
        posemb_col = self.adapt_pos1d(pos2posemb1d(pos_col, c))          # (N, H, C)

        memory = src.permute(0, 2, 3, 1)                                 # (N, C, H, W) -> (N, H, W, C)
        for layer in self.encoder_layers:
            memory = layer(memory, mask, posemb_row, posemb_col)

        classes, coords = [], []
        output = tgt
        for lid, layer in enumerate(self.decoder_layers):
            output = layer(output, reference_points, memory, mask, self.adapt_pos2d,
                           self.adapt_pos1d, posemb_row, posemb_col)
            reference = inverse_sigmoid(reference_points)               # (N, P*Q, 2), per layer as the original
            classes.append(self.class_embed[lid](output))
            tmp = self.bbox_embed[lid](output)                          # (N, P*Q, 4)
            tmp[..., :2] += reference
            coords.append(tmp.sigmoid())
        return torch.stack(classes), torch.stack(coords)

