"""Conditional DETR's transformer (Atten4Vis/ConditionalDETR): DETR's encoder, conditional decoder.

Decoder layers project content and position separately (sa_*/ca_* Linear maps) and attend with a
bare multi-head attention that owns only `out_proj`. Cross-attention concatenates, per head, the
content part and a spatial part: for queries the sine embedding of the reference point scaled by
`query_scale(output)` (identity in the first layer), for keys the pixel's position embedding. So
q/k have 2C channels (head size 2C/heads), values C. Only the first layer adds the query position
to the content query (`ca_qpos_proj`, absent from later layers as in the original's state_dict).

Key layout: transformer.encoder.layers.i.*, transformer.decoder.{layers.i.*, norm, query_scale,
ref_point_head}, the same as the original so its checkpoints load strictly.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common.mlp import MLP


class BareMultiheadAttention(nn.Module):
    """Attention over already projected q, k (S, B, Dqk) and v (S, B, Dv); owns `out_proj` only.

    As the original's: logits scaled by (Dqk/heads)^-0.5, key padding -> -inf, dropout on the
    weights, output projection Dv -> Dv (bias initialised to 0). need_weights=False computes the
    same through F.scaled_dot_product_attention (its default scale is the same (Dqk/heads)^-0.5),
    so a fused kernel keeps no attention weights (the `attention="sdpa"` mode)."""

    def __init__(self, qk_dim: int, num_heads: int, v_dim: int, dropout: float = 0.0, need_weights: bool = True):
        super().__init__()
        if qk_dim % num_heads or v_dim % num_heads:
            raise ValueError(f"qk_dim {qk_dim} and v_dim {v_dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.need_weights = need_weights
        self.out_proj = nn.Linear(v_dim, v_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        tq, b, dqk = q.shape
        tk, dv = k.shape[0], v.shape[-1]
        h = self.num_heads
        if not self.need_weights:
            qh = q.reshape(tq, b, h, dqk // h).permute(1, 2, 0, 3)                 # (B, h, Tq, dqk/h)
            kh = k.reshape(tk, b, h, dqk // h).permute(1, 2, 0, 3)                 # (B, h, Tk, dqk/h)
            vh = v.reshape(tk, b, h, dv // h).permute(1, 2, 0, 3)                  # (B, h, Tk, dv/h)
            keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
            out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=keep,
                                                 dropout_p=self.dropout if self.training else 0.0)
            return self.out_proj(out.permute(2, 0, 1, 3).reshape(tq, b, dv))     # (Tq, B, Dv)
        q = q.reshape(tq, b * h, dqk // h).transpose(0, 1) * (dqk // h) ** -0.5   # (B*h, Tq, dqk/h)
        k = k.reshape(tk, b * h, dqk // h).transpose(0, 1)                         # (B*h, Tk, dqk/h)
        v = v.reshape(tk, b * h, dv // h).transpose(0, 1)                          # (B*h, Tk, dv/h)
        logits = torch.bmm(q, k.transpose(1, 2))                                   # (B*h, Tq, Tk)
        if key_padding_mask is not None:
            logits = logits.view(b, h, tq, tk).masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
            logits = logits.view(b * h, tq, tk)
        weights = F.dropout(logits.softmax(-1), p=self.dropout, training=self.training)
        out = torch.bmm(weights, v).transpose(0, 1).reshape(tq, b, dv)             # (Tq, B, Dv)
        return self.out_proj(out)


def sine_embed_points(points: Tensor, num_feats: int) -> Tensor:
    """(Q, B, 2) points (x, y) in [0, 1] -> (Q, B, 2 * num_feats) sine embedding, y first."""
    scale = 2 * math.pi
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=points.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)
    pos_x = points[:, :, 0, None] * scale / dim_t
    pos_y = points[:, :, 1, None] * scale / dim_t
    pos_x = torch.stack((pos_x[:, :, 0::2].sin(), pos_x[:, :, 1::2].cos()), dim=3).flatten(2)
    pos_y = torch.stack((pos_y[:, :, 0::2].sin(), pos_y[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((pos_y, pos_x), dim=2)


class ConditionalDecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, need_weights: bool = True):
        super().__init__()
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = BareMultiheadAttention(d_model, nhead, d_model, dropout, need_weights)

        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_proj = nn.Linear(d_model, d_model)
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = BareMultiheadAttention(d_model * 2, nhead, d_model, dropout, need_weights)
        self.nhead = nhead

        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor, pos: Tensor,
                query_pos: Tensor, query_sine_embed: Tensor, is_first: bool) -> Tensor:
        """tgt, query_pos, query_sine_embed (Q, B, C); memory, pos (S, B, C); mask (B, S)."""
        # self-attention: content and position projected separately, then added
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        # cross-attention: per head [content | spatial] for queries and keys
        nq, b, c = tgt.shape
        s, h = memory.shape[0], self.nhead
        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        v = self.ca_v_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if is_first:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q_sine = self.ca_qpos_sine_proj(query_sine_embed)
        q = torch.cat([q.view(nq, b, h, c // h), q_sine.view(nq, b, h, c // h)], dim=3).view(nq, b, 2 * c)
        k = torch.cat([k.view(s, b, h, c // h), k_pos.view(s, b, h, c // h)], dim=3).view(s, b, 2 * c)
        tgt2 = self.cross_attn(q, k, v, key_padding_mask=memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(tgt2))

        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class ConditionalDecoder(nn.Module):
    def __init__(self, layer: ConditionalDecoderLayer, num_layers: int, d_model: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, 2, 2)
        for later in self.layers[1:]:
            later.ca_qpos_proj = None   # only the first layer adds the query position (original)
        self.d_model = d_model

    def forward(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor, pos: Tensor,
                query_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Returns hs (layers, B, Q, C) normalised, and reference points (B, Q, 2) in [0, 1]."""
        reference = self.ref_point_head(query_pos).sigmoid()              # (Q, B, 2)
        output, intermediate = tgt, []
        for i, layer in enumerate(self.layers):
            scale = 1 if i == 0 else self.query_scale(output)
            # the same sine embedding in every layer, recomputed in each as the original does
            # (each layer's copy is kept for backward: what the original's training holds)
            query_sine = sine_embed_points(reference, self.d_model // 2)  # (Q, B, C)
            output = layer(output, memory, memory_key_padding_mask, pos, query_pos,
                           query_sine * scale, is_first=(i == 0))
            intermediate.append(self.norm(output))
        # the original normalises the last output once more and keeps that one (same numbers)
        intermediate[-1] = self.norm(output)
        hs = torch.stack(intermediate).transpose(1, 2)                   # (layers, Q, B, C) -> (layers, B, Q, C)
        return hs, reference.transpose(0, 1)
