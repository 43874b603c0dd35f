"""DETR's encoder-decoder transformer (post-norm by default), with a swappable encoder attention.

Layout and key names follow facebookresearch/detr: transformer.encoder.layers.i.{self_attn,
linear1, linear2, norm1, norm2}, transformer.decoder.layers.i.{self_attn, multihead_attn, linear1,
linear2, norm1, norm2, norm3}, transformer.decoder.norm. Sequences are (S, B, C) inside.

Attention modes (`attention`):
- "mha": nn.MultiheadAttention called as the original calls it, need_weights=True, so the
  head-averaged (B, S, S) weights are computed explicitly and their softmax kept for backward.
- "sdpa": the same modules and weights called with need_weights=False, so PyTorch routes them
  through scaled_dot_product_attention (fused kernels, no stored weight matrix).

ENACT (`enact_config`): the encoder self-attention of the chosen layers is an
enact.EnactAttention (keys self_attn.W_q/W_k/W_v/W_o/W_prob, as the ENACT release). As the
release does, the encoder passes it no padding mask unless the config asks for `mask_padding`.
All transformer weights with more than one dimension are Xavier-uniform initialised (W_prob
included), as both releases do.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from .common.activation import activation_fn
from .common.enact_layers import enact_layers as enact_layer_indices

ATTENTION_MODES = ("mha", "sdpa")


def with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """self-attention (q = k = src + pos, v = src) + FFN, post-norm (or pre-norm).

    Same modules and key names in DETR and DETR-ENACT; only the registration order (hence the
    state_dict order) differs, so `release_key_order` ("detr" | "enact") reproduces each release's.
    """

    def __init__(self, self_attn: nn.Module, d_model: int, dim_feedforward: int, dropout: float,
                 activation: str = "relu", normalize_before: bool = False, need_weights: bool = True,
                 use_padding_mask: bool = True, release_key_order: str = "detr"):
        super().__init__()
        self.self_attn = self_attn
        if release_key_order == "enact":  # DETR-ENACT registers norm1 before the FFN
            self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        if release_key_order != "enact":
            self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before
        self.need_weights = need_weights
        self.use_padding_mask = use_padding_mask

    def _attend(self, x: Tensor, pos: Tensor | None, padding_mask: Tensor | None) -> Tensor:
        q = k = with_pos(x, pos)
        mask = padding_mask if self.use_padding_mask else None
        return self.self_attn(q, k, value=x, key_padding_mask=mask, need_weights=self.need_weights)[0]

    def forward(self, src: Tensor, padding_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        if self.normalize_before:
            src = src + self.dropout1(self._attend(self.norm1(src), pos, padding_mask))
            ffn = self.linear2(self.dropout(self.activation(self.linear1(self.norm2(src)))))
            return src + self.dropout2(ffn)
        src = self.norm1(src + self.dropout1(self._attend(src, pos, padding_mask)))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class DecoderLayer(nn.Module):
    """self-attention over queries, cross-attention to memory, FFN; post-norm (or pre-norm)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, activation: str = "relu",
                 normalize_before: bool = False, need_weights: bool = True):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before
        self.need_weights = need_weights

    def forward(self, tgt: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None,
                pos: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        pre = self.normalize_before
        x = self.norm1(tgt) if pre else tgt
        q = k = with_pos(x, query_pos)
        tgt = tgt + self.dropout1(self.self_attn(q, k, value=x, need_weights=self.need_weights)[0])
        tgt = tgt if pre else self.norm1(tgt)
        x = self.norm2(tgt) if pre else tgt
        attn = self.multihead_attn(query=with_pos(x, query_pos), key=with_pos(memory, pos), value=memory,
                                   key_padding_mask=memory_padding_mask, need_weights=self.need_weights)[0]
        tgt = tgt + self.dropout2(attn)
        tgt = tgt if pre else self.norm2(tgt)
        x = self.norm3(tgt) if pre else tgt
        tgt = tgt + self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return tgt if pre else self.norm3(tgt)


class Encoder(nn.Module):
    def __init__(self, layers: Sequence[EncoderLayer], norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, src: Tensor, padding_mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class Decoder(nn.Module):
    """Returns the normalised output of every layer, stacked: (L, Q, B, C)."""

    def __init__(self, layers: Sequence[DecoderLayer], norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None,
                pos: Tensor | None = None, query_pos: Tensor | None = None) -> Tensor:
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_padding_mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


def _make_enact_attention(d_model: int, nhead: int, config) -> nn.Module:
    from enact import EnactAttention  # the plug-in is only needed for ENACT variants

    return EnactAttention(d_model, nhead, config=config)


class Transformer(nn.Module):
    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: str = "relu",
                 normalize_before: bool = False, attention: str = "mha", enact_config=None,
                 enact_layers: Sequence[int] | None = None):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}; got {attention!r}")
        activation_fn(activation)  # a bad name fails here, naming the valid ones
        need_weights = attention == "mha"
        enact_set = set(enact_layer_indices(num_encoder_layers, enact_layers))

        def encoder_layer(self_attn: nn.Module, is_enact: bool) -> EncoderLayer:
            use_mask = not is_enact or bool(getattr(enact_config, "mask_padding", False))
            return EncoderLayer(self_attn, d_model, dim_feedforward, dropout, activation, normalize_before,
                                need_weights=need_weights and not is_enact, use_padding_mask=use_mask,
                                release_key_order="enact" if is_enact else "detr")

        # one prototype per kind, deep-copied per layer, as the originals' _get_clones
        plain = encoder_layer(nn.MultiheadAttention(d_model, nhead, dropout=dropout), False)
        enact = None
        if enact_config is not None:
            enact = encoder_layer(_make_enact_attention(d_model, nhead, enact_config), True)
        layers = [copy.deepcopy(enact if (enact is not None and i in enact_set) else plain)
                  for i in range(num_encoder_layers)]
        self.encoder = Encoder(layers, nn.LayerNorm(d_model) if normalize_before else None)
        dec = DecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, normalize_before, need_weights)
        self.decoder = Decoder([copy.deepcopy(dec) for _ in range(num_decoder_layers)], nn.LayerNorm(d_model))
        self.d_model, self.nhead = d_model, nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: Tensor, mask: Tensor, query_embed: Tensor, pos_embed: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, C, h, w), mask (B, h, w), query_embed (Q, C), pos (B, C, h, w)
        -> decoder states (L, B, Q, C) and memory (B, C, h, w)."""
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # (B, C, h, w) -> (S, B, C)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)  # (S, B, C)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)  # (Q, C) -> (Q, B, C)
        mask = mask.flatten(1)  # (B, S)
        memory = self.encoder(src, mask, pos_embed)
        hs = self.decoder(torch.zeros_like(query_embed), memory, mask, pos_embed, query_embed)  # (L, Q, B, C)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).view(bs, c, h, w)
