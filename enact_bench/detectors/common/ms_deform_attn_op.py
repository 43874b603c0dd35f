"""Multi-scale deformable attention as one registered op, with the compiled op's memory.

The originals (fundamentalvision/Deformable-DETR, IDEA-Research/DINO) train with a compiled
CUDA op, `MSDeformAttnFunction` over the `MultiScaleDeformableAttention` extension built from
their `models/ops`. Its memory behaviour, read from their sources
(`functions/ms_deform_attn_func.py`, `src/cuda/ms_deform_attn_cuda.cu`):

- forward allocates only the output, `at::zeros({N, Lq, M, D})` viewed as (N, Lq, M*D);
- it saves for backward exactly its inputs: value, spatial shapes, level start index,
  sampling locations, attention weights (`ctx.save_for_backward`), no sampled values;
- backward allocates only `zeros_like(value)`, `zeros_like(sampling_loc)`,
  `zeros_like(attn_weight)` and is not differentiable again (`once_differentiable`).

Here the same contract is a `torch.library.custom_op`, so that autograd, FakeTensorMode (the
CPU estimate), FlopCounterMode and the memory trackers see one op, as they would see the kernel:

    enact_bench::ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                                attention_weights, im2col_step) -> output
    enact_bench::ms_deform_attn_backward(value, spatial_shapes, level_start_index,
                                         sampling_locations, attention_weights, grad_output,
                                         im2col_step) -> (grad_value, grad_sampling_locations,
                                                          grad_attention_weights)

Shapes (the originals'): value (N, S, M, D), S = sum_l H_l W_l, levels consecutive and row-major;
spatial_shapes (L, 2) int64 (H, W); level_start_index (L,) int64; sampling_locations
(N, Lq, M, L, P, 2) as (x, y) in [0, 1]; attention_weights (N, Lq, M, L, P); output (N, Lq, M*D).

Implementations, and what `msda_impls_seen()` reports for each:

- "pytorch_op": every device. Forward: bilinear `grid_sample` level by level (align_corners
  False, zero padding, the formulation of the originals' `ms_deform_attn_core_pytorch`), each
  level's weighted sum added into the output; no autograd graph is built; each image's level
  map is read through a strided view of value (no copy). Backward: per level,
  the sampled values are recomputed and `aten.grid_sampler_2d_backward` gives the value and grid
  gradients (what autograd of the PyTorch path calls too). Transient memory: one level's grid and
  sampled values at a time (forward), plus one level's value copy (backward). These buffers live inside the op: a dispatch-mode
  tracker (LiveTensorTracker) sees the op's outputs only, i.e. what the compiled kernel allocates.
- "cuda_ext": on CUDA, when a module named `MultiScaleDeformableAttention` with the originals'
  `ms_deform_attn_forward` / `ms_deform_attn_backward` is importable (their `models/ops` built
  with `python setup.py build install` for this torch). The kernel takes float32 and float64
  only (AT_DISPATCH_FLOATING_TYPES) and contiguous inputs; other dtypes use "pytorch_op".
- "pytorch_reference": not this op: `ms_deform_attn_core`, the autograd path (msda="pytorch").
- "fake": FakeTensorMode ran the fake implementations (shapes only; allocations as the kernel's).

Under autocast (CPU or CUDA) the op runs in float32, as autocast runs `grid_sampler` (the
PyTorch path's op) in float32.

FLOPs (registered with torch.utils.flop_counter, 2 FLOPs per multiply-add), per query, head,
level, point and channel (N * Lq * M * L * P * D of them):
- forward: 5 multiply-adds, the Deformable DETR paper's (appendix A.1) "5 N_q K C": 4 for the
  bilinear interpolation of the 4 neighbouring taps, 1 for the attention-weighted sum;
- backward: 20 multiply-adds: gradient of the attention weight (the 4-tap value again, then its
  product with the output gradient: 5), gradient of the value (output gradient times attention
  weight, then spread over the 4 taps: 5), gradient of the location (the x- and y-derivatives of
  the bilinear interpolant, 4 taps each, then each times the weighted output gradient: 10).
"""
from __future__ import annotations

import importlib
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

OP_NAME = "enact_bench::ms_deform_attn"
BACKWARD_OP_NAME = "enact_bench::ms_deform_attn_backward"
EXTENSION_MODULE = "MultiScaleDeformableAttention"
IMPLS = ("cuda_ext", "pytorch_op", "pytorch_reference", "fake")
FWD_MACS_PER_ELEMENT = 5   # 4 bilinear taps + 1 attention weight (paper appendix A.1)
BWD_MACS_PER_ELEMENT = 20  # see the module docstring

# -- which implementation ran ------------------------------------------------------------------
_seen: set[str] = set()


def note_msda_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown msda implementation {impl!r}; expected one of {IMPLS}")
    _seen.add(impl)


def reset_msda_impls() -> None:
    _seen.clear()


def msda_impls_seen() -> list[str]:
    """Implementations of deformable attention that ran since the last reset, sorted."""
    return sorted(_seen)


def msda_impl_metric(metrics: dict, reasons: dict) -> None:
    """Record field `msda_impl`: the implementations that ran, "+"-joined ("cuda_ext",
    "pytorch_op", "pytorch_reference", "fake"), or None with its reason when none ran."""
    seen = msda_impls_seen()
    if seen:
        metrics["msda_impl"] = "+".join(seen)
    else:
        metrics["msda_impl"] = None
        reasons["msda_impl"] = "no multi-scale deformable attention ran in the measured step"


# -- the compiled extension (CUDA) -------------------------------------------------------------
_EXT_UNSET = object()
_ext = _EXT_UNSET


def compiled_extension():
    """The originals' `MultiScaleDeformableAttention` module, or None when it is not importable."""
    global _ext
    if _ext is _EXT_UNSET:
        try:
            mod = importlib.import_module(EXTENSION_MODULE)
            ok = hasattr(mod, "ms_deform_attn_forward") and hasattr(mod, "ms_deform_attn_backward")
            _ext = mod if ok else None
        except ImportError:
            _ext = None
    return _ext


def _use_extension(value: Tensor) -> bool:
    return value.is_cuda and value.dtype in (torch.float32, torch.float64) and compiled_extension() is not None


def _kernel_im2col_step(batch: int, im2col_step: int) -> int:
    """The kernel asserts batch % min(batch, im2col_step) == 0; the step only chunks the batch
    (same numbers), so a step that does not divide the batch is replaced by their gcd."""
    step = min(batch, im2col_step)
    return step if batch % step == 0 else math.gcd(batch, step)


# -- shared helpers ----------------------------------------------------------------------------
def _levels(spatial_shapes: Tensor, level_start_index: Tensor) -> list[tuple[int, int, int]]:
    """(H, W, start) per level as Python ints (reads two tiny tensors)."""
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    return [(int(h), int(w), int(s)) for (h, w), s in zip(shapes, starts)]


def _value_level(value: Tensor, h: int, w: int, start: int) -> Tensor:
    """(N, S, M, D) -> this level's map as grid_sample's input (N*M, D, H, W) (a copy)."""
    n, _, m, d = value.shape
    # (N, HW, M, D) -> (N, HW, M*D) -> (N, M*D, HW) -> (N*M, D, H, W)
    return value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)


def _grid_level(sampling_locations: Tensor, lvl: int) -> Tensor:
    """(N, Lq, M, L, P, 2) in [0, 1] -> this level's grid (N*M, Lq, P, 2) in [-1, 1]."""
    # (N, Lq, M, P, 2) -> (N, M, Lq, P, 2) -> (N*M, Lq, P, 2)
    return (2 * sampling_locations[:, :, :, lvl] - 1).transpose(1, 2).flatten(0, 1)


def _weights_level(attention_weights: Tensor, lvl: int) -> Tensor:
    """(N, Lq, M, L, P) -> this level's weights (N*M, 1, Lq, P)."""
    n, lq, m, _, p = attention_weights.shape
    return attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, 1, lq, p)


def check_shapes(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                 attention_weights: Tensor) -> None:
    """Shape checks that need no tensor data (usable under FakeTensorMode)."""
    if value.dim() != 4:
        raise ValueError(f"value must be (N, S, M, D), got {tuple(value.shape)}")
    n, _, m, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (N, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}")
    _, lq, m2, n_levels, n_points, _ = sampling_locations.shape
    if sampling_locations.shape[0] != n or m2 != m:
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} do not match value "
                         f"{tuple(value.shape)} (batch and heads)")
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, n_points):
        raise ValueError(f"attention_weights must be (N, Lq, M, L, P) = {(n, lq, m, n_levels, n_points)}, "
                         f"got {tuple(attention_weights.shape)}")
    if tuple(spatial_shapes.shape) != (n_levels, 2) or tuple(level_start_index.shape) != (n_levels,):
        raise ValueError(f"spatial_shapes must be ({n_levels}, 2) and level_start_index ({n_levels},), got "
                         f"{tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}")


# -- forward -----------------------------------------------------------------------------------
def pytorch_forward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                    attention_weights: Tensor) -> Tensor:
    """The PyTorch implementation: level by level and image by image, no graph. -> (N, Lq, M*D).

    Each image's level map is sampled through a strided view (M, D, H, W) of value (channels
    innermost in memory), not a (N*M, D, H, W) copy: the same arithmetic, bit for bit, about
    twice as fast on CPU (benchmarks/ms_deform_attn.py).
    """
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    with torch.no_grad():
        acc = value.new_zeros(n, m, d, lq)
        for lvl, (h, w, start) in enumerate(_levels(spatial_shapes, level_start_index)):
            grid = _grid_level(sampling_locations, lvl).view(n, m, lq, -1, 2)  # (N, M, Lq, P, 2)
            weights = _weights_level(attention_weights, lvl).view(n, m, 1, lq, -1)  # (N, M, 1, Lq, P)
            for b in range(n):
                # (HW, M, D) -> (M, D, HW) -> (M, D, H, W): a view
                value_b = value[b, start:start + h * w].permute(1, 2, 0).unflatten(2, (h, w))
                sampled = F.grid_sample(value_b, grid[b], mode="bilinear", padding_mode="zeros",
                                        align_corners=False)  # (M, D, Lq, P)
                acc[b] += (sampled * weights[b]).sum(-1)  # (M, D, Lq)
                del sampled
        # (N, M, D, Lq) -> (N, M*D, Lq) -> (N, Lq, M*D)
        return acc.view(n, m * d, lq).transpose(1, 2).contiguous()


@torch.library.custom_op(OP_NAME, mutates_args=())
def ms_deform_attn(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                   attention_weights: Tensor, im2col_step: int = 64) -> Tensor:
    note_msda_impl("pytorch_op")
    return pytorch_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@ms_deform_attn.register_kernel("cuda")
def _ms_deform_attn_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         im2col_step=64):
    if not _use_extension(value):
        note_msda_impl("pytorch_op")
        return pytorch_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    note_msda_impl("cuda_ext")
    ext = compiled_extension()
    out = ext.ms_deform_attn_forward(value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
                                     sampling_locations.contiguous(), attention_weights.contiguous(),
                                     _kernel_im2col_step(value.shape[0], im2col_step))
    return out.view(value.shape[0], sampling_locations.shape[1], value.shape[2] * value.shape[3])


@ms_deform_attn.register_fake
def _ms_deform_attn_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                         im2col_step=64):
    # the kernel allocates only its output (N, Lq, M, D), returned as (N, Lq, M*D)
    check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    note_msda_impl("fake")
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


# -- backward ----------------------------------------------------------------------------------
def pytorch_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
                     attention_weights: Tensor, grad_output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the forward, level by level, recomputing each level's sampled values."""
    n, _, m, d = value.shape
    lq = sampling_locations.shape[1]
    with torch.no_grad():
        grad_value = torch.zeros_like(value)
        grad_loc = torch.zeros_like(sampling_locations)
        grad_attn = torch.zeros_like(attention_weights)
        # (N, Lq, M*D) -> (N, M, D, Lq) -> (N*M, D, Lq, 1): broadcast over the points
        grad_out = grad_output.reshape(n, lq, m, d).permute(0, 2, 3, 1).reshape(n * m, d, lq, 1)
        for lvl, (h, w, start) in enumerate(_levels(spatial_shapes, level_start_index)):
            value_l = _value_level(value, h, w, start)  # (N*M, D, H, W)
            grid_l = _grid_level(sampling_locations, lvl)  # (N*M, Lq, P, 2)
            sampled = torch.ops.aten.grid_sampler_2d(value_l, grid_l, 0, 0, False)  # (N*M, D, Lq, P)
            # d out / d weight = sampled value: (N*M, D, Lq, P) -> sum over D -> (N*M, Lq, P)
            g_attn = (sampled * grad_out).sum(1)
            del sampled
            grad_attn[:, :, :, lvl] = g_attn.view(n, m, lq, -1).transpose(1, 2)
            # d out / d sampled = weight: (N*M, D, Lq, P)
            g_sampled = grad_out * _weights_level(attention_weights, lvl)
            g_value_l, g_grid_l = torch.ops.aten.grid_sampler_2d_backward(
                g_sampled, value_l, grid_l, 0, 0, False, [True, True])
            del g_sampled
            # (N*M, D, H, W) -> (N, M, D, HW) -> (N, HW, M, D)
            grad_value[:, start:start + h * w] = g_value_l.view(n, m, d, h * w).permute(0, 3, 1, 2)
            # grid = 2 * location - 1: (N*M, Lq, P, 2) -> (N, M, Lq, P, 2) -> (N, Lq, M, P, 2)
            grad_loc[:, :, :, lvl] = 2 * g_grid_l.view(n, m, lq, -1, 2).transpose(1, 2)
    return grad_value, grad_loc, grad_attn


@torch.library.custom_op(BACKWARD_OP_NAME, mutates_args=())
def ms_deform_attn_backward(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                            sampling_locations: Tensor, attention_weights: Tensor, grad_output: Tensor,
                            im2col_step: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    note_msda_impl("pytorch_op")
    return pytorch_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                            grad_output)


@ms_deform_attn_backward.register_kernel("cuda")
def _ms_deform_attn_backward_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                  grad_output, im2col_step=64):
    if not _use_extension(value):
        note_msda_impl("pytorch_op")
        return pytorch_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                grad_output)
    note_msda_impl("cuda_ext")
    ext = compiled_extension()
    grad_value, grad_loc, grad_attn = ext.ms_deform_attn_backward(
        value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(),
        sampling_locations.contiguous(), attention_weights.contiguous(), grad_output.contiguous(),
        _kernel_im2col_step(value.shape[0], im2col_step))
    # the kernel's zeros_like of contiguous inputs: same layout as empty_like below for contiguous inputs
    return grad_value, grad_loc, grad_attn


@ms_deform_attn_backward.register_fake
def _ms_deform_attn_backward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                                  grad_output, im2col_step=64):
    # the kernel allocates only the three gradients (zeros_like of each input)
    note_msda_impl("fake")
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


# -- autograd ----------------------------------------------------------------------------------
def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step = inputs
    # exactly the op's inputs, as MSDeformAttnFunction.forward saves them
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ctx.im2col_step = im2col_step


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_attn = ms_deform_attn_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output,
        ctx.im2col_step)
    return grad_value, None, None, grad_loc, grad_attn, None


ms_deform_attn.register_autograd(_backward, setup_context=_setup_context)
for _device in ("cpu", "cuda"):
    torch.library.register_autocast(OP_NAME, _device, torch.float32)


# -- FLOPs -------------------------------------------------------------------------------------
def sampled_elements(value_shape: Iterable[int], sampling_locations_shape: Iterable[int]) -> int:
    """N * Lq * M * L * P * D: one per (query, head, level, point, channel)."""
    n, _, m, d = value_shape
    _, lq, _, n_levels, n_points, _ = sampling_locations_shape
    return n * lq * m * n_levels * n_points * d


@register_flop_formula(torch.ops.enact_bench.ms_deform_attn)
def ms_deform_attn_flop(value_shape, spatial_shapes_shape, level_start_index_shape, sampling_locations_shape,
                        attention_weights_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * FWD_MACS_PER_ELEMENT * sampled_elements(value_shape, sampling_locations_shape)


@register_flop_formula(torch.ops.enact_bench.ms_deform_attn_backward)
def ms_deform_attn_backward_flop(value_shape, spatial_shapes_shape, level_start_index_shape,
                                 sampling_locations_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * BWD_MACS_PER_ELEMENT * sampled_elements(value_shape, sampling_locations_shape)
