"""Adapters that let `enact.patch` put ENACT into attention modules other than nn.MultiheadAttention.

An adapter recognises a host attention class by duck typing (its projections and its forward's
parameters, never its name or its package), builds the replacement module from the host's
weights, and keeps the host's call signature, so the layer that calls it does not change.
This module imports torch only: HF transformers' classes are recognised by their shape.

Adapters:

- `MultiheadAttentionAdapter`: nn.MultiheadAttention -> EnactAttention (the original behaviour).
- `ProjectionSelfAttentionAdapter`: a self-attention with four Linear(C, C) projections
  `q_proj`, `k_proj`, `v_proj` and `o_proj` (or `out_proj`), batch-first (B, S, C), whose forward
  takes `hidden_states`, `attention_mask` and the positional embedding added to queries and keys
  as `position_embeddings` or `object_queries`, and returns (output, weights). HF transformers'
  DETR (DetrSelfAttention), Conditional DETR (ConditionalDetrSelfAttention), DAB-DETR's encoder
  (its DetrAttention), Table Transformer (TableTransformerAttention) and the RT-DETR family's AIFI
  encoder layers (RTDetrSelfAttention, RTDetrV2SelfAttention, DFineSelfAttention) have this shape.
  The replacement, `EnactSelfAttention`, computes q = k = hidden_states + pos, v = hidden_states
  through an EnactAttention holding the host's projection weights.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from .attention import EnactAttention
from .config import EnactConfig

POSITION_ARGS = ("position_embeddings", "object_queries")  # how hosts name the positional input


class MultiheadAttentionAdapter:
    name = "nn.MultiheadAttention"

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return isinstance(module, nn.MultiheadAttention)

    @staticmethod
    def why_not(module: nn.Module) -> str:
        return "not an nn.MultiheadAttention"

    @staticmethod
    def build(module: nn.Module, config: EnactConfig | None) -> nn.Module:
        return EnactAttention.from_multihead_attention(module, config)


def _out_proj(module: nn.Module):
    for name in ("o_proj", "out_proj"):
        lin = getattr(module, name, None)
        if isinstance(lin, nn.Linear):
            return lin
    return None


def _forward_params(module: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set()


class ProjectionSelfAttentionAdapter:
    name = "q_proj/k_proj/v_proj/o_proj self-attention (HF transformers' DETR family)"

    @classmethod
    def why_not(cls, module: nn.Module) -> str:
        """Empty when the module has the shape this adapter needs; else what is missing."""
        lins = [getattr(module, n, None) for n in ("q_proj", "k_proj", "v_proj")] + [_out_proj(module)]
        if not all(isinstance(lin, nn.Linear) for lin in lins):
            return "no Linear q_proj, k_proj, v_proj and o_proj/out_proj"
        c = lins[0].in_features
        if any(lin.in_features != c or lin.out_features != c for lin in lins):
            return "its projections are not all Linear(C, C)"
        if any(lin.bias is None for lin in lins):
            return "its projections have no bias (ENACT's W_q, W_k, W_v, W_o have one)"
        params = _forward_params(module)
        if "hidden_states" not in params or not params & set(POSITION_ARGS):
            return "its forward takes no hidden_states with position_embeddings / object_queries"
        if _num_heads(module, c) is None:
            return "neither num_heads nor head_dim says its number of heads"
        return ""

    @classmethod
    def accepts(cls, module: nn.Module) -> bool:
        return not cls.why_not(module)

    @staticmethod
    def build(module: nn.Module, config: EnactConfig | None) -> nn.Module:
        return EnactSelfAttention.from_projections(module, config)


def _num_heads(module: nn.Module, embed_dim: int) -> int | None:
    heads = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
    if isinstance(heads, int) and heads > 0 and embed_dim % heads == 0:
        return heads
    head_dim = getattr(module, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0 and embed_dim % head_dim == 0:
        return embed_dim // head_dim
    return None


def key_padding_from(attention_mask: Tensor | None, length: int) -> Tensor | None:
    """The (B, S) key padding mask (True = padding) of a host's attention mask: None, a (B, S)
    padding mask (1/True = a real position), or a (B, 1, S_q, S) mask, boolean (True = attend) or
    additive (negative = masked). A padded key is masked in every query row, so the first row says."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 4:
        m = m[:, 0, 0, :]  # (B, 1, S_q, S) -> (B, S)
        if m.dtype != torch.bool:
            return m < 0
        return ~m
    if m.dim() == 2 and m.shape[1] == length:
        return ~m.bool()
    raise ValueError(f"cannot read a key padding mask from an attention mask of shape {tuple(attention_mask.shape)}")


class EnactSelfAttention(nn.Module):
    """ENACT in the place of a batch-first q/k/v/o self-attention (ProjectionSelfAttentionAdapter).

    forward(hidden_states (B, S, C), attention_mask=None, <pos name>=None, **ignored) -> (out, None):
    q = k = hidden_states + pos, v = hidden_states; keys and values pooled by `self.enact`, an
    EnactAttention(batch_first=True) with the host's projections as W_q, W_k, W_v, W_o. The host's
    attention mask reaches ENACT only with `mask_padding` (as DETR's key padding mask does).
    """

    def __init__(self, enact: EnactAttention, position_arg: str):
        super().__init__()
        if position_arg not in POSITION_ARGS:
            raise ValueError(f"position_arg must be one of {POSITION_ARGS}, got {position_arg!r}")
        self.enact = enact
        self.position_arg = position_arg

    @classmethod
    def from_projections(cls, host: nn.Module, config: EnactConfig | None = None) -> "EnactSelfAttention":
        why = ProjectionSelfAttentionAdapter.why_not(host)
        if why:
            raise TypeError(f"{type(host).__name__} cannot take ENACT: {why}")
        q, k, v, o = host.q_proj, host.k_proj, host.v_proj, _out_proj(host)
        c = q.in_features
        ref = o.weight
        enact = EnactAttention(c, _num_heads(host, c), config=config, batch_first=True, device=ref.device,
                               dtype=ref.dtype)
        with torch.no_grad():
            for lin, src in ((enact.W_q, q), (enact.W_k, k), (enact.W_v, v), (enact.W_o, o)):
                lin.weight.copy_(src.weight)
                lin.bias.copy_(src.bias)
        params = _forward_params(host)
        position_arg = next(p for p in POSITION_ARGS if p in params)
        new = cls(enact, position_arg)
        new.train(host.training)
        return new

    @property
    def last_stats(self) -> dict | None:
        return self.enact.last_stats

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args, **kwargs):
        if kwargs.get("key_value_states") is not None:
            raise ValueError("EnactSelfAttention replaces a self-attention; it got key_value_states (cross-attention)")
        if args:
            raise TypeError("EnactSelfAttention takes hidden_states and attention_mask positionally, the rest by name")
        pos = kwargs.get(self.position_arg)
        qk = hidden_states if pos is None else hidden_states + pos  # (B, S, C)
        padding = None
        if self.enact.config.mask_padding:
            padding = key_padding_from(attention_mask, hidden_states.shape[1])
        out, _ = self.enact(qk, qk, hidden_states, key_padding_mask=padding)
        return out, None


ADAPTERS = (MultiheadAttentionAdapter, ProjectionSelfAttentionAdapter)


def adapter_for(module: nn.Module):
    """The first adapter that accepts `module`, or None."""
    return next((a for a in ADAPTERS if a.accepts(module)), None)


def why_no_adapter(module: nn.Module) -> str:
    """Why no adapter accepts `module` (one line)."""
    reasons = "; ".join(f"{a.name}: {a.why_not(module)}" for a in ADAPTERS)
    return f"{type(module).__name__} has no ENACT adapter ({reasons})"
