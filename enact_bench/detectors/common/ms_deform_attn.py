"""Multi-scale deformable attention (Zhu et al., Deformable DETR).

Parts reusable by every deformable detector (Deformable DETR, DINO):

- `ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights)`: the
  sampling + weighted sum as the autograd path (msda="pytorch", the reference). Bilinear `grid_sample` per level (align_corners=False, zero padding),
  the same formulation as the original release's `ms_deform_attn_core_pytorch`, so its numbers
  are the reference the CUDA kernel was checked against. Works on CPU and CUDA, in float32,
  float16 and bfloat16 (on CUDA), with autograd, and under FakeTensorMode (shapes are read as
  Python ints, never from tensor data, when `spatial_shapes` is a list).
  Autograd keeps every level's value copy, grid and the stacked sampled values
  (N*M, D, Lq, L*P) for backward: the memory of the originals' debug path, not of their training.
- `enact_bench::ms_deform_attn` (ms_deform_attn_op.py): the same numbers as one registered op
  with the compiled CUDA op's memory (saves only its inputs; msda="op", the default).
- `MSDeformAttn(d_model, n_levels, n_heads, n_points, msda="op")`: the module, with the
  original's parameter names (`sampling_offsets`, `attention_weights`, `value_proj`,
  `output_proj`), its initialisation and its forward signature, so released checkpoints load
  strictly. `msda` picks the core ("op" | "pytorch"); `set_msda(model, msda)` sets it everywhere.
- `LevelShapes`: the per-level (H, W) as Python ints that also builds, once and on first use, the
  (L, 2) spatial-shapes and (L,) level-start tensors the op takes (the originals build them once
  per transformer forward and every layer saves the same two tensors).

Spatial shapes may be given as a (n_levels, 2) long tensor (the original's form) or as a list
of (H, W) int pairs; the list form avoids reading tensor data (needed under fake tensors and
CUDA graphs). `level_start_index` is accepted for signature compatibility and not needed by the
PyTorch path (levels are consecutive in `value`).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn_op import check_shapes, ms_deform_attn, note_msda_impl

SpatialShapes = Union[Tensor, Sequence[Sequence[int]]]


MSDA_CHOICES = ("op", "pytorch")


def check_msda(msda: str) -> str:
    if msda not in MSDA_CHOICES:
        raise ValueError(f"msda must be one of {MSDA_CHOICES} (\"op\": the registered op with the compiled "
                         f"kernel's memory; \"pytorch\": the autograd reference path); got {msda!r}")
    return msda


def msda_attention_label(msda: str) -> str:
    """The detector's `attention` label in records: "ms_deform_attn_op" | "ms_deform_attn_pytorch"."""
    return f"ms_deform_attn_{check_msda(msda)}"


class LevelShapes(tuple):
    """A tuple of per-level (H, W) Python ints, carrying the op's index tensors.

    `tensors(device)` -> (spatial_shapes (L, 2) int64, level_start_index (L,) int64), made on the
    first call and reused after (one pair per forward, like the originals'); nothing is
    allocated when only the PyTorch path runs.
    """

    def __new__(cls, shapes: "SpatialShapes"):
        return super().__new__(cls, shapes_as_list(shapes))

    def tensors(self, device) -> tuple[Tensor, Tensor]:
        cached = self.__dict__.get("_tensors")
        if cached is None or cached[0].device != torch.device(device):
            shapes = torch.as_tensor(list(self), dtype=torch.long, device=device).view(len(self), 2)
            starts = torch.as_tensor(level_start_index_of(self), dtype=torch.long, device=device)
            cached = self.__dict__["_tensors"] = (shapes, starts)
        return cached


def shapes_as_list(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(n_levels, 2) tensor or sequence of (H, W) -> list of (H, W) Python ints (a LevelShapes
    is returned as it is, so that its tensors travel with it)."""
    if isinstance(spatial_shapes, LevelShapes):
        return spatial_shapes
    if isinstance(spatial_shapes, Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be (n_levels, 2), got {tuple(spatial_shapes.shape)}")
        spatial_shapes = spatial_shapes.tolist()
    out = []
    for hw in spatial_shapes:
        if len(hw) != 2:
            raise ValueError(f"each spatial shape must be (H, W), got {hw!r}")
        out.append((int(hw[0]), int(hw[1])))
    return out


def level_start_index_of(spatial_shapes: SpatialShapes) -> list[int]:
    """Offsets of each level in a flattened multi-level sequence: [0, H0*W0, H0*W0+H1*W1, ...]."""
    starts, total = [], 0
    for h, w in shapes_as_list(spatial_shapes):
        starts.append(total)
        total += h * w
    return starts


def ms_deform_attn_core(value: Tensor, spatial_shapes: SpatialShapes, sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """Sample every level bilinearly and sum with the attention weights.

    value:               (N, S, M, D), S = sum_l H_l * W_l, levels consecutive, row-major
    sampling_locations:  (N, Lq, M, L, P, 2), (x, y) in [0, 1] of each level's padded map
    attention_weights:   (N, Lq, M, L, P), softmax-normalised over L * P by the caller
    returns:             (N, Lq, M * D)
    """
    shapes = shapes_as_list(spatial_shapes)
    n, s, m, d = value.shape
    _, lq, m2, n_levels, n_points, two = sampling_locations.shape
    if m2 != m or two != 2 or n_levels != len(shapes):
        raise ValueError(
            f"sampling_locations {tuple(sampling_locations.shape)} must be (N, Lq, {m}, {len(shapes)}, P, 2) "
            f"for value {tuple(value.shape)} and {len(shapes)} levels")
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"value has {s} positions but spatial_shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
    note_msda_impl("pytorch_reference")
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # [0, 1] -> grid_sample's [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, HW, M, D) -> (N, HW, M*D) -> (N, M*D, HW) -> (N*M, D, H, W)
        value_l = value_per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        # -> (N*M, D, Lq, P)
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N, Lq, M, L, P) -> (N, M, Lq, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, n_levels * n_points)
    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P) -> sum -> (N*M, D, Lq) -> (N, M*D, Lq)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()  # (N, Lq, M*D)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the original release's parameters and init.

    forward(query, reference_points, input_flatten, input_spatial_shapes,
            input_level_start_index=None, input_padding_mask=None) -> (N, Lq, C)

    msda="op" (default): the registered op `enact_bench::ms_deform_attn` (saves only its inputs,
    as the originals' compiled MSDeformAttnFunction); "pytorch": `ms_deform_attn_core` (autograd
    keeps the sampled values, as the originals' ms_deform_attn_core_pytorch). Same numbers.

    query (N, Lq, C); reference_points (N, Lq, L, 2) as (x, y) in [0, 1] or (N, Lq, L, 4) as
    (cx, cy, w, h) boxes; input_flatten (N, S, C) the value tokens; input_padding_mask (N, S),
    True = padding (its values are zeroed before sampling).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 msda: str = "op"):
        super().__init__()
        self.msda = check_msda(msda)  # a plain attribute: not in the state_dict
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        for name, v in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.im2col_step = 64  # kept for parity with the original (used only by its CUDA kernel)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Offsets start on a ring: head h points along angle 2*pi*h/M, scaled so the larger of
        # |cos|, |sin| is 1, and point i sits (i + 1) cells out. Weight zero, so at init the
        # offsets do not depend on the query.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                input_spatial_shapes: SpatialShapes, input_level_start_index=None,
                input_padding_mask: Tensor | None = None) -> Tensor:
        shapes = shapes_as_list(input_spatial_shapes)
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if len(shapes) != self.n_levels:
            raise ValueError(f"got {len(shapes)} levels of spatial shapes, module was built for {self.n_levels}")
        if sum(h * w for h, w in shapes) != s:
            raise ValueError(f"input_flatten has {s} positions but spatial shapes {list(shapes)} sum to "
                             f"{sum(h * w for h, w in shapes)}")
        m, nl, p = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)  # (N, S, M, D)
        offsets = self.sampling_offsets(query).view(n, lq, m, nl, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, nl * p)
        weights = F.softmax(weights, -1).view(n, lq, m, nl, p)

        if reference_points.shape[-1] == 2:
            # offsets are in cells of each level: divide by (W_l, H_l)
            # int64 as the originals stack it from spatial_shapes (the division promotes to the
            # offsets' dtype: same numbers; autograd then keeps their 64-byte int64 copy)
            normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.int64, device=query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are in units of half the box, spread over the points
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points last dim must be 2 (x, y) or 4 (cx, cy, w, h), "
                             f"got {reference_points.shape[-1]}")
        if self.msda == "op":
            if isinstance(input_spatial_shapes, Tensor) and isinstance(input_level_start_index, Tensor):
                spatial_shapes, level_start = input_spatial_shapes, input_level_start_index  # the original's form
            else:
                levels = shapes if isinstance(shapes, LevelShapes) else LevelShapes(shapes)
                spatial_shapes, level_start = levels.tensors(value.device)
            check_shapes(value, spatial_shapes, level_start, locations, weights)
            out = ms_deform_attn(value, spatial_shapes, level_start, locations, weights, self.im2col_step)
        else:
            out = ms_deform_attn_core(value, shapes, locations, weights)  # (N, Lq, C)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}, msda={self.msda!r}")


def set_msda(model: nn.Module, msda: str) -> nn.Module:
    """Set the deformable-attention core of every MSDeformAttn in `model` ("op" | "pytorch")."""
    check_msda(msda)
    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.msda = msda
    return model
