"""EnactAttention: multi-head attention over entropy-clustered keys/values (docs/enact.md: the steps and the options).

A drop-in for nn.MultiheadAttention at DETR's encoder call site: queries keep their full length,
keys and values are pooled into n = S // L windows of L consecutive positions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .config import EnactConfig


def _to_host(t: Tensor):
    try:
        return t.tolist()
    except RuntimeError:  # a fake tensor's values are unknown (DataDependentOutputException)
        return None


class EnactAttention(nn.Module):
    """ENACT self-attention with the released code's parameters W_q, W_k, W_v, W_o, W_prob.

    forward(query, key, value, key_padding_mask=None, attn_mask=None, need_weights=False)
    -> (output, weights or None), sequence-first (S, B, C) unless batch_first.
    """

    def __init__(self, embed_dim: int, num_heads: int, config: EnactConfig | None = None,
                 batch_first: bool = False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(
                f"embed_dim must be a positive multiple of num_heads; got embed_dim={embed_dim}, num_heads={num_heads}"
            )
        if config is None:
            config = EnactConfig.reference()
        if not isinstance(config, EnactConfig):
            raise TypeError(f"config must be an EnactConfig or None; got {type(config).__name__}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.config = config
        self.batch_first = batch_first
        kw = {"device": device, "dtype": dtype}
        self.W_q = nn.Linear(embed_dim, embed_dim, **kw)
        self.W_k = nn.Linear(embed_dim, embed_dim, **kw)
        self.W_v = nn.Linear(embed_dim, embed_dim, **kw)
        self.W_o = nn.Linear(embed_dim, embed_dim, **kw)
        self.W_prob = nn.Linear(embed_dim, 1, **kw)
        for p in self.parameters():  # the release: Xavier-uniform weights, nn.Linear's biases
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self._stats: dict | None = None

    # --- construction from an existing attention --------------------------------------------
    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, config: EnactConfig | None = None) -> "EnactAttention":
        """A copy of `mha`'s projections (W_q, W_k, W_v from in_proj, W_o from out_proj) with a
        freshly initialised W_prob, on mha's device and dtype. mha's dropout is not carried over
        (the released ENACT attention has none)."""
        if not isinstance(mha, nn.MultiheadAttention):
            raise TypeError(f"expected nn.MultiheadAttention; got {type(mha).__name__}")
        C = mha.embed_dim
        if mha.kdim != C or mha.vdim != C:
            raise ValueError(f"ENACT needs kdim == vdim == embed_dim ({C}); got kdim={mha.kdim}, vdim={mha.vdim}")
        if mha.bias_k is not None or mha.in_proj_bias is None or mha.out_proj.bias is None:
            raise ValueError("ENACT needs an nn.MultiheadAttention with biases (bias=True) and add_bias_kv=False")
        ref = mha.out_proj.weight
        new = cls(C, mha.num_heads, config=config, batch_first=mha.batch_first, device=ref.device, dtype=ref.dtype)
        if mha._qkv_same_embed_dim:
            wq, wk, wv = mha.in_proj_weight.chunk(3, dim=0)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        bq, bk, bv = mha.in_proj_bias.chunk(3, dim=0)
        with torch.no_grad():
            for lin, w, b in ((new.W_q, wq, bq), (new.W_k, wk, bk), (new.W_v, wv, bv),
                              (new.W_o, mha.out_proj.weight, mha.out_proj.bias)):
                lin.weight.copy_(w)
                lin.bias.copy_(b)
        new.train(mha.training)
        return new

    # --- statistics of the last forward ------------------------------------------------------
    @property
    def last_stats(self) -> dict | None:
        """{"cluster_size", "key_len_before", "key_len_after"} of the last forward: ints when one
        value holds for the batch, lists per image otherwise. None before the first forward.
        Per-image lengths with a fixed L and mask_padding stay on the device until read here
        (None under FakeTensorMode, where they are unknown)."""
        if self._stats is None:
            return None
        return {k: (_to_host(v) if isinstance(v, Tensor) else v) for k, v in self._stats.items()}

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}, config={self.config}"

    # --- forward ----------------------------------------------------------------------------
    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, need_weights: bool = False,
                average_attn_weights: bool = True, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ValueError(
                "EnactAttention does not take attn_mask/is_causal: keys are pooled into windows, so a "
                "per-key mask has no meaning; pass None (DETR's encoder does)"
            )
        if self.batch_first:  # (B, S, C) -> (S, B, C): views
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if key.shape != value.shape or key.dim() != 3 or key.shape[2] != self.embed_dim:
            raise ValueError(
                f"key and value must both be (S, B, {self.embed_dim}) (batch_first={self.batch_first}); "
                f"got {tuple(key.shape)} and {tuple(value.shape)}"
            )
        if query.dim() != 3 or query.shape[1:] != key.shape[1:]:
            raise ValueError(f"query must be (S_q, B, {self.embed_dim}) like key; got {tuple(query.shape)}")
        masked = self.config.mask_padding and key_padding_mask is not None
        if masked and key_padding_mask.shape != key.shape[1::-1]:
            raise ValueError(
                f"key_padding_mask must be (B, S) = {tuple(key.shape[1::-1])} (True = padding); "
                f"got {tuple(key_padding_mask.shape)}"
            )

        logits = self.W_prob(key).squeeze(-1).t().contiguous()  # (S, B, 1) -> (B, S)
        if masked:
            pk, pv, key_mask = self._cluster_general(logits, key, value, key_padding_mask.bool())
        else:
            pk, pv, key_mask = self._cluster(logits, key, value)

        S_q, B, C = query.shape
        h, d = self.num_heads, self.head_dim
        q = self.W_q(query).view(S_q, B, h, d).permute(1, 2, 0, 3)  # (S_q, B, C) -> (B, h, S_q, d)
        k = self.W_k(pk).view(-1, B, h, d).permute(1, 2, 0, 3)  # (n, B, C) -> (B, h, n, d)
        v = self.W_v(pv).view(-1, B, h, d).permute(1, 2, 0, 3)
        weights = None
        if need_weights or self.config.backend == "math":
            out, weights = self._attend_math(q, k, v, key_mask)
        else:
            out = self._attend_sdpa(q, k, v, key_mask)
        # (B, h, S_q, d) -> (S_q, B, C): a view when the fused kernel wrote its output in q's
        # (S_q, B, h, d) memory order (CPU flash attention does), else one copy
        out = self.W_o(out.permute(2, 0, 1, 3).reshape(S_q, B, C))
        if self.batch_first:
            out = out.transpose(0, 1)  # (S_q, B, C) -> (B, S_q, C), a view
        if need_weights:
            weights = weights.mean(dim=1) if average_attn_weights else weights
            return out, weights
        return out, None

    # --- clustering ----------------------------------------------------------------------------
    def _cluster(self, logits: Tensor, key: Tensor, value: Tensor):
        """One L for all images (batch scope, or a fixed L): contiguous windows, no gather."""
        cfg = self.config
        S = key.shape[0]
        e = ops.smooth(ops.entropy_bits(logits), cfg.sigma)  # (B, S) float32
        if cfg.cluster_size is not None:
            L = cfg.cluster_size
            if L > S:
                raise ValueError(f"EnactConfig.cluster_size={L} exceeds the key length {S}")
        else:
            means_t = ops.mean_run_length(ops.step(ops.second_derivative(e)))  # (B,) float32
            means = means_t.tolist()  # the forward's one device->host transfer
            if cfg.cluster_scope == "image":
                sizes = [max(1, round(m)) for m in means]
                if len(set(sizes)) > 1:
                    lengths = torch.full_like(means_t, S, dtype=torch.int64)
                    size_t = torch.round(means_t).to(torch.int64).clamp_min(1)  # == sizes, on device
                    n_max = max(S // s for s in sizes)
                    stats = {"cluster_size": sizes, "key_len_before": [S] * len(sizes),
                             "key_len_after": [S // s for s in sizes]}
                    return self._pool_per_image(e, key, value, size_t, lengths, n_max, max(sizes), stats, None)
            L = ops.cluster_size(means)
        front, n = ops.trim_bounds(S, L)
        if cfg.cluster_scope == "image":
            B = key.shape[1]
            self._stats = {"cluster_size": [L] * B, "key_len_before": [S] * B, "key_len_after": [n] * B}
        else:
            self._stats = {"cluster_size": L, "key_len_before": S, "key_len_after": n}
        return ops.window_pool(key, e, L, front, n), ops.window_pool(value, e, L, front, n), None

    def _cluster_general(self, logits: Tensor, key: Tensor, value: Tensor, padding: Tensor):
        """Padded positions excluded: each image's valid positions (row-major, as DETR flattens
        them) are moved to a prefix, and the procedure runs on that prefix alone."""
        cfg = self.config
        S, B = key.shape[:2]
        order = torch.argsort(padding.to(torch.uint8), dim=1, stable=True)  # (B, S): valid first
        valid_len = (~padding).sum(dim=1)  # (B,)
        valid = torch.arange(S, device=key.device).unsqueeze(0) < valid_len.unsqueeze(1)  # (B, S)
        e = ops.smooth(ops.entropy_bits(logits.gather(1, order), valid), cfg.sigma)  # (B, S) compacted
        e = e.masked_fill(~valid, 0.0)  # each image's sequence ends at its length (zero padding after)
        if cfg.cluster_size is not None:  # static shapes, no transfer
            L = cfg.cluster_size
            if L > S:
                raise ValueError(f"EnactConfig.cluster_size={L} exceeds the key length {S}")
            size_t = torch.full_like(valid_len, L).minimum(valid_len.clamp_min(1))  # short image: 1 window
            stats = {"cluster_size": L, "key_len_before": valid_len, "key_len_after": valid_len // size_t}
            return self._pool_per_image(e, key, value, size_t, valid_len, S // L, L, stats, order)
        means_t = ops.mean_run_length(ops.step(ops.second_derivative(e)), valid_len)  # (B,) float32
        host = torch.cat([means_t, valid_len.to(torch.float32)]).tolist()  # the one transfer
        means, lengths = host[:B], [int(x) for x in host[B:]]
        if min(lengths) == 0:
            raise ValueError("key_padding_mask marks every position of an image as padding")
        if cfg.cluster_scope == "image":
            sizes = [max(1, round(m)) for m in means]
            size_t = torch.round(means_t).to(torch.int64).clamp_min(1)  # == sizes, on device
        else:
            L = ops.cluster_size(means)
            sizes = [min(L, l) for l in lengths]  # an image shorter than L: one window of all of it
            size_t = torch.full_like(valid_len, L).minimum(valid_len)
        n_list = [l // s for l, s in zip(lengths, sizes)]
        stats = {"cluster_size": sizes if cfg.cluster_scope == "image" else L,
                 "key_len_before": lengths, "key_len_after": n_list}
        return self._pool_per_image(e, key, value, size_t, valid_len, max(n_list), max(sizes), stats, order)

    def _pool_per_image(self, e, key, value, size: Tensor, length: Tensor, n_max: int, size_max: int,
                        stats: dict, order):
        """Windows of `size` (B,) positions over each image's first `length` (B,) (compacted)
        positions; n_max and size_max are the host-side maxima that fix the padded shapes."""
        index, member, window = ops.window_index((length % size) // 2, size, length // size, n_max, size_max)
        self._stats = stats
        pk = ops.window_pool_gather(key, e, index, member, order)
        pv = ops.window_pool_gather(value, e, index, member, order)
        return pk, pv, window

    # --- attention over the pooled keys -------------------------------------------------------
    def _attend_math(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None):
        """Explicit weights (B, h, S_q, n); returns (out (B, h, S_q, d), weights)."""
        logits = q @ k.transpose(-2, -1)  # (B, h, S_q, n)
        if self.config.scale == "standard":
            logits = logits * (1.0 / math.sqrt(self.head_dim))
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        weights = F.softmax(logits, dim=-1)
        del logits  # without autograd the logits can go before the next S x n tensor is made
        if self.config.scale == "reference":
            weights = weights / self.head_dim  # the release divides the weights by the head size
        return weights @ v, weights

    def _attend_sdpa(self, q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None) -> Tensor:
        """Fused attention. The reference scale: softmax(QK^T)/d @ V == softmax(QK^T) @ (V/d), so
        the division falls on the n pooled values, not on the S x n weights or the S outputs."""
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, n), True = attend
        if self.config.scale == "reference":
            return F.scaled_dot_product_attention(q, k, v / self.head_dim, attn_mask=mask, scale=1.0)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
