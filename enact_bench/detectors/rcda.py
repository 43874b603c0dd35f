"""Row-column decoupled attention (RCDA), Anchor DETR's attention, in the original's key layout.

One module owns `in_proj_weight` (5C, C) and `in_proj_bias` (5C,), sliced in this order:
query-row, query-column, key-row, key-column, value; plus `out_proj` (C -> C). That is the
layout of megvii-research/AnchorDETR's MultiheadRCDA, so its checkpoints load strictly.

A query attends to the W columns through its row embedding and to the H rows through its column
embedding; the keys are the projected feature map averaged over the other axis. The output of a
query is sum_{i,j} a_col[i] * a_row[j] * v[i, j]: two small softmaxes instead of one over H*W.

`forward_enact` is the ENACT release's encoder variant (Anchor-DETR-ENACT): the H*W pixels pooled
into n cluster tokens act as the keys and values; the full-resolution map, averaged over rows or
columns, gives W column queries and H row queries; each pixel (i, j) receives
sum_k a_col[i, k] * a_row[j, k] * v[k]. The release swaps the roles of the weight slices for this
(slices 0/1 project the pooled keys, slices 2/3 the full-resolution map); we do the same so that
its checkpoints mean the same thing here.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MultiheadRCDA(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, lean: bool = False):
        super().__init__()
        self.lean = lean  # False: the original's contraction layout and copies (its memory)
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(5 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(5 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _proj(self, x: Tensor, slot: int) -> Tensor:
        c = self.embed_dim
        return F.linear(x, self.in_proj_weight[slot * c:(slot + 1) * c], self.in_proj_bias[slot * c:(slot + 1) * c])

    def _heads(self, x: Tensor) -> Tensor:
        # (N, ..., C) -> (N, heads, ..., head_dim)
        n, *mid, _ = x.shape
        x = x.reshape(n, *mid, self.num_heads, self.head_dim)
        return x.movedim(-2, 1)

    def _drop(self, w: Tensor) -> Tensor:
        return F.dropout(w, p=self.dropout, training=self.training)

    def forward(self, query_row: Tensor, query_col: Tensor, key_row: Tensor, key_col: Tensor,
                value: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """query_row/col (N, L, C); key_row/col, value (N, H, W, C); mask (N, H, W) True = pad.
        Returns (N, L, C)."""
        n, h, w, c = value.shape
        scaling = self.head_dim ** -0.5
        q_row = self._heads(self._proj(query_row, 0) * scaling)           # (N, h, L, d)
        q_col = self._heads(self._proj(query_col, 1) * scaling)           # (N, h, L, d)
        k_row = self._heads(self._proj(key_row, 2).mean(1))               # (N, H, W, C) -> (N, h, W, d)
        k_col = self._heads(self._proj(key_col, 3).mean(2))               # (N, H, W, C) -> (N, h, H, d)
        v = self._heads(self._proj(value, 4))                             # (N, h, H, W, d)

        w_row = q_row @ k_row.transpose(-1, -2)                           # (N, h, L, W)
        w_col = q_col @ k_col.transpose(-1, -2)                           # (N, h, L, H)
        if key_padding_mask is not None:
            w_row = w_row.masked_fill(key_padding_mask[:, 0, :][:, None, None, :], float("-inf"))
            w_col = w_col.masked_fill(key_padding_mask[:, :, 0][:, None, None, :], float("-inf"))
        w_row = self._drop(w_row.softmax(-1))
        w_col = self._drop(w_col.softmax(-1))

        heads, d, length = self.num_heads, self.head_dim, q_row.shape[2]
        if h < w:   # contract the longer axis first, as the original does
            v_t = v.transpose(2, 3).reshape(n, heads, w, h * d)           # (N, h, W, H*d)
            by_row = (w_row @ v_t).reshape(n, heads, length, h, d)        # (N, h, L, H, d)
            if self.lean:
                out = (w_col.unsqueeze(-2) @ by_row).squeeze(-2)          # (N, h, L, d)
            else:   # the original batches this product query-first: both operands are copied
                wc = w_col.reshape(n * heads, length, 1, h).transpose(0, 1)          # (L, N*h, 1, H)
                out = (wc @ by_row.reshape(n * heads, length, h, d).transpose(0, 1))  # (L, N*h, 1, d)
                return self.out_proj(out.reshape(length, n, c)).transpose(0, 1)       # (N, L, C)
        else:
            by_col = (w_col @ v.reshape(n, heads, h, w * d)).reshape(n, heads, length, w, d)
            out = (w_row.unsqueeze(-2) @ by_col).squeeze(-2)              # (N, h, L, d)
        if not self.lean:   # the original projects sequence-first (L, N, C)
            return self.out_proj(out.permute(2, 0, 1, 3).reshape(length, n, c)).transpose(0, 1)
        out = out.transpose(1, 2).reshape(n, length, c)                   # (N, L, C)
        return self.out_proj(out)

    def forward_enact(self, pooled_key_row: Tensor, pooled_key_col: Tensor, map_row: Tensor,
                      map_col: Tensor, pooled_value: Tensor) -> Tensor:
        """The ENACT release's encoder attention over n pooled tokens.

        pooled_key_row/col, pooled_value (N, n, C); map_row/col (N, H, W, C). Returns (N, H, W, C).
        No padding mask (the release applies none here)."""
        n, h, w, c = map_row.shape
        scaling = self.head_dim ** -0.5
        k_row = self._heads(self._proj(pooled_key_row, 0) * scaling)      # (N, h, n, d)
        k_col = self._heads(self._proj(pooled_key_col, 1) * scaling)      # (N, h, n, d)
        q_row = self._heads(self._proj(map_row, 2).mean(1))               # (N, h, W, d)
        q_col = self._heads(self._proj(map_col, 3).mean(2))               # (N, h, H, d)
        v = self._heads(self._proj(pooled_value, 4))                      # (N, h, n, d)

        a_row = self._drop((q_row @ k_row.transpose(-1, -2)).softmax(-1))  # (N, h, W, n)
        a_col = self._drop((q_col @ k_col.transpose(-1, -2)).softmax(-1))  # (N, h, H, n)
        weights = a_col.unsqueeze(3) * a_row.unsqueeze(2)                 # (N, h, H, W, n)
        out = weights @ v.unsqueeze(2)                                    # (N, h, H, W, d)
        out = out.permute(0, 2, 3, 1, 4).reshape(n, h, w, c)              # (N, H, W, C)
        return self.out_proj(out)


def _dim_t(num_pos_feats: int, temperature: float, device) -> Tensor:
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    return temperature ** (2 * (dim_t // 2) / num_pos_feats)


def _sin_cos(x: Tensor) -> Tensor:
    """(..., F) -> (..., F): sin of the even features and cos of the odd ones, interleaved."""
    return torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)


def pos2posemb1d(pos: Tensor, num_pos_feats: int = 256, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of 1-D positions in [0, 1]: (...,) -> (..., num_pos_feats)."""
    pos = pos * (2 * math.pi)
    return _sin_cos(pos[..., None] / _dim_t(num_pos_feats, temperature, pos.device))


def pos2posemb2d(pos: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of 2-D points (x, y) in [0, 1]: (..., 2) -> (..., 2 * num_pos_feats), y first.

    One scaled copy of the points and one dim_t for both axes, as the original (what autograd
    keeps is then the original's too)."""
    pos = pos * (2 * math.pi)
    dim_t = _dim_t(num_pos_feats, temperature, pos.device)
    return torch.cat((_sin_cos(pos[..., 1, None] / dim_t), _sin_cos(pos[..., 0, None] / dim_t)), dim=-1)


def mask_to_positions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised pixel-centre coordinates of the valid region: mask (N, H, W) -> y (N, H), x (N, W).

    Read from the first column / first row, as the original (images are padded bottom-right)."""
    not_mask = ~mask
    y = not_mask[:, :, 0].cumsum(1, dtype=torch.float32)
    x = not_mask[:, 0, :].cumsum(1, dtype=torch.float32)
    return (y - 0.5) / y[:, -1:], (x - 0.5) / x[:, -1:]
