"""What a CUDA GPU would run, modelled on fake CPU tensors (`target = "cuda"` of the estimate).

FakeTensorMode on device cpu follows the CPU's kernel choices. These differ on a GPU in what
they keep alive, and the CUDA target switches them to CUDA's choice while the estimate runs:

1. `torch.optim.AdamW` and `clip_grad_norm_` use the foreach implementation on CUDA tensors
   (torch/optim/optimizer.py `_default_to_fused_or_foreach`: foreach only for devices in
   `_get_foreach_kernels_supported_devices()`, i.e. not cpu, and only for plain `torch.Tensor`;
   torch/nn/utils/clip_grad.py: foreach when `_has_foreach_support`). The estimate passes
   `foreach=True` (see train/optim.make_optimizer and train/step.train_step).
2. `scaled_dot_product_attention` goes to a fused kernel when CUDA's rules allow it
   (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp and sdp_utils_cpp.h; `sdpa_backend`
   below restates the rules for dense inputs). The fused kernels apply dropout inside the kernel
   and keep only q, k, v, the output and the logsumexp (+ an RNG seed/offset) for backward; the
   CPU falls back to the math kernel when there is dropout, which stores the attention weights
   and the dropout mask. `cuda_sdpa` calls the very aten op that CUDA's dispatcher would call
   (`_scaled_dot_product_flash_attention` / `_scaled_dot_product_efficient_attention`), whose
   meta kernels give the CUDA shapes (the efficient kernel's logsumexp is padded to a multiple
   of 32 queries) and whose autograd node saves what CUDA's does.
3. `aten::dropout` runs `native_dropout` (output + bool mask kept) where the CPU multiplies by a
   float noise tensor, and float16 softmax upcasts inside its kernel (predict/composites_cuda.py,
   from aten/src/ATen/native/Dropout.cpp and SoftMax.cpp).
4. A tensor built from Python data is a host tensor, copied to the GPU only when asked
   (predict/host_tensors.py).
5. Mixed precision follows CUDA's autocast lists, not the CPU's (predict/autocast_cuda.py, from
   aten/src/ATen/autocast_mode.h / .cpp), and float16 trains with a GradScaler
   (predict/amp_scaler.py).

`step_kernels(target, ...)` is the one context the fake training step enters for all of these.

nn.MultiheadAttention with need_weights=True never calls scaled_dot_product_attention (it runs
bmm + softmax + dropout + bmm itself), on CPU and CUDA alike, so only its dropout changes here.
"""
from __future__ import annotations

import math
from collections import Counter
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from enact_bench.choices import TARGETS
from enact_bench.predict import autocast_cuda
from enact_bench.predict.composites_cuda import cuda_composites
from enact_bench.predict.host_tensors import HOST_OPS, cuda_host_copies


@dataclass(frozen=True)
class CudaArch:
    """The compute capability that decides which SDPA kernels exist (sm80+ for flash)."""

    major: int = 9
    minor: int = 0

    def __post_init__(self):
        if not (5 <= self.major <= 12) or self.minor < 0:
            raise ValueError(f"compute capability must be sm50 .. sm12x, got sm{self.major}{self.minor}")


def _min_gemm_alignment(dtype: torch.dtype, arch: CudaArch) -> int:
    """sdp_utils.cpp minimum_gemm_alignment: elements the head dim must be a multiple of."""
    is_half = dtype in (torch.float16, torch.bfloat16)
    use_tc = arch.major >= 8 or (arch.major >= 7 and is_half)
    align = 4 if arch.major >= 8 else 1
    if use_tc:
        align = max(align, 128 // (16 if is_half else 32))
    return align


def _mask_shape_ok(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> bool:
    """sdp_utils_cpp.h check_attn_mask_shape (used by cuDNN only; kept for the record)."""
    if mask.shape[-2] not in (q.shape[2], 1) or mask.shape[-1] not in (k.shape[2], 1):
        return False
    return mask.dim() == 2 or (mask.dim() == 4 and mask.shape[0] in (1, q.shape[0]) and mask.shape[1] in (1, q.shape[1]))


def sdpa_backend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None,
                 dropout_p: float = 0.0, is_causal: bool = False, enable_gqa: bool = False,
                 arch: CudaArch = CudaArch()) -> str:
    """The kernel CUDA's `select_sdp_backend` picks for dense inputs: "flash", "efficient",
    "cudnn" or "math" (default priority flash > efficient > math; cuDNN first on sm90/sm10x
    with a recent cuDNN, but only for fp16/bf16 and dropout a multiple of 1/16).

    Shared filters: 4-D q, k, v (check_tensor_shapes), non-empty sequences, last-dim stride 1
    for q, k, v and the mask, equal batch sizes and head counts (or GQA).
    Flash: no attn_mask, fp16/bf16 (sm80+), equal head dims <= 256, sm80..sm121, causal only
    with square shapes; sm86/89 reject training with head dim in (192, 224].
    Efficient: any mask, fp32/fp16/bf16 on sm80+ (fp32/fp16 below), head dims (qk and v)
    multiples of the gemm alignment (4 fp32 / 8 half on sm80+), sm50..sm121.
    """
    q, k, v = query, key, value
    if not (q.dim() == k.dim() == v.dim() == 4):
        return "math"
    if q.shape[-2] == 0 or k.shape[-2] == 0:
        return "math"
    if not (q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1):
        return "math"
    if attn_mask is not None and attn_mask.stride(-1) != 1 and attn_mask.shape[-1] != 1:
        return "math"
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        return "math"
    same_heads = q.shape[1] == k.shape[1] == v.shape[1]
    if not same_heads and not (enable_gqa and k.shape[1] == v.shape[1] and q.shape[1] % k.shape[1] == 0):
        return "math"
    dtype = q.dtype
    half = dtype in (torch.float16, torch.bfloat16)
    requires_grad = q.requires_grad or k.requires_grad or v.requires_grad
    e_qk, e_v = q.shape[-1], v.shape[-1]

    cudnn_first = arch.major in (9, 10) and half
    if cudnn_first and dropout_p * 16.0 == math.floor(dropout_p * 16.0) and e_qk % 8 == 0 and e_v % 8 == 0 \
            and e_qk <= 128 and e_v <= 128 and k.shape[2] != 1 and (attn_mask is None or _mask_shape_ok(attn_mask, q, k)):
        return "cudnn"

    flash_dtypes = (torch.float16, torch.bfloat16) if arch.major >= 8 else (torch.float16,)
    flash = (attn_mask is None and dtype in flash_dtypes and e_qk == k.shape[-1] == e_v and e_qk <= 256
             and arch.major >= 8 and not (is_causal and q.shape[2] != k.shape[2]))
    if flash and requires_grad and (arch.major, arch.minor) in ((8, 6), (8, 7), (8, 9), (12, 0), (12, 1)):
        flash = e_qk <= 192 or (dropout_p == 0.0 and e_qk > 224)
    if flash:
        return "flash"

    eff_dtypes = (torch.float16, torch.float32, torch.bfloat16) if arch.major >= 8 else (torch.float16, torch.float32)
    align = _min_gemm_alignment(dtype, arch)
    if dtype in eff_dtypes and e_qk == k.shape[-1] and e_qk % align == 0 and e_v % align == 0 and e_qk > 0 and e_v > 0:
        return "efficient"
    return "math"


def _float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """attention.cpp convert_boolean_attn_mask: True = attend -> 0, False -> -inf (new tensor)."""
    if mask.dtype == torch.bool:
        return torch.where(mask.logical_not(), -float("inf"), 0.0).to(dtype)
    return mask


def _aligned(t: torch.Tensor, alignment: int) -> bool:
    return all(t.stride(i) % alignment == 0 for i in range(t.dim() - 1))


def _efficient_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """attention.cpp preprocess_mask: strides padded to a multiple of 8 (a padded copy of the
    mask, sliced back), then broadcast to (B, H, L, S) without a copy."""
    if not _aligned(mask, 8):
        last = mask.shape[-1]
        mask = F.pad(mask, (0, 8 - last % 8)).narrow(-1, 0, last)
    return mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])


def _plain_cast(to_type: torch.dtype, t: torch.Tensor) -> torch.Tensor:
    """autocast_mode.cpp cached_cast for a tensor that is not a parameter (no cache)."""
    if t.is_floating_point() and t.dtype not in (to_type, torch.float64):
        return t.to(to_type)
    return t


class CudaSdpa:
    """A stand-in for F.scaled_dot_product_attention that runs the kernel CUDA would pick.

    `counts` tallies the backends chosen (for records and tests).
    """

    def __init__(self, arch: CudaArch = CudaArch()):
        self.arch = arch
        self.counts: Counter[str] = Counter()

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                 enable_gqa=False):
        # aten::scaled_dot_product_attention is in CUDA's lower-precision autocast list: q, k, v and
        # a floating mask are cast before the kernel is chosen, then the kernel runs without
        # autocast (autocast_mode.h WrapFunction_ excludes the key while it runs)
        amp = autocast_cuda.active()
        if amp is not None and torch.is_autocast_enabled("cpu"):  # CUDA's autocast on fake CPU tensors
            low, key_set = torch.get_autocast_dtype("cpu"), torch._C.DispatchKey.AutocastCPU
            cast = amp.cast
        elif query.is_cuda and torch.is_autocast_enabled("cuda"):  # fake CUDA tensors (fake_cuda_reference)
            low, key_set = torch.get_autocast_dtype("cuda"), torch._C.DispatchKey.AutocastCUDA
            cast = _plain_cast
        else:
            return self._run(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        query, key, value = (cast(low, t) for t in (query, key, value))
        attn_mask = cast(low, attn_mask) if attn_mask is not None else None
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key_set)):
            return self._run(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    def _run(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        backend = sdpa_backend(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, self.arch)
        self.counts[backend] += 1
        aten = torch.ops.aten
        if backend in ("flash", "cudnn"):
            # cuDNN keeps what flash keeps (output + (B, H, L) fp32 softmax statistics); flash's
            # meta kernel stands in for both
            e = query.shape[-1]
            if e % 8:  # attention.cpp pads the head dim to a multiple of 8 for flash
                pad = 8 - e % 8
                query, key, value = (F.pad(t, (0, pad)) for t in (query, key, value))
                scale = scale if scale is not None else 1.0 / math.sqrt(e)
            out = aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False,
                                                           scale=scale)[0]
            return out[..., :e] if e % 8 else out
        if backend == "efficient":
            mask = None
            if attn_mask is not None:
                mask = _efficient_mask(_float_mask(attn_mask, query.dtype), query, key)
            compute_lse = query.requires_grad or key.requires_grad or value.requires_grad
            return aten._scaled_dot_product_efficient_attention(query, key, value, mask, compute_lse, dropout_p,
                                                                is_causal, scale=scale)[0]
        mask = attn_mask
        if mask is not None and mask.dtype == torch.bool:
            mask = _float_mask(mask, query.dtype)
        return aten._scaled_dot_product_attention_math(query, key, value, mask, dropout_p, is_causal, None,
                                                       scale=scale, enable_gqa=enable_gqa)[0]


@contextmanager
def cuda_sdpa_policy(arch: CudaArch = CudaArch()):
    """Inside the block, F.scaled_dot_product_attention (which nn.MultiheadAttention with
    need_weights=False and ENACT's sdpa backend call) runs CUDA's kernel choice. Yields the
    CudaSdpa, whose `counts` says which kernels were modelled. Not thread-safe (it swaps a
    module attribute), like any patch of torch.nn.functional."""
    sdpa = CudaSdpa(arch)
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = sdpa
    try:
        yield sdpa
    finally:
        F.scaled_dot_product_attention = original


@dataclass
class StepKernels:
    """What the fake training step runs with, per target: `sdpa` (the CudaSdpa counting the kernels
    modelled; None for the CPU), `autocast` (a factory of the forward's autocast context) and
    `scaler` (float16 on the CUDA target: the GradScaler; else None), `host_ops` (for the
    live-tensor tracker)."""

    sdpa: CudaSdpa | None
    autocast: Callable
    scaler: object | None = None
    host_ops: frozenset = frozenset()  # ops whose outputs the tracker leaves out (host memory)


@contextmanager
def step_kernels(target: str, arch: CudaArch = CudaArch(), autocast_dtype: str | None = None, optimizer=None):
    """The kernels of `target` for one training step. "cpu": FakeTensorMode's CPU kernels and
    torch.autocast("cpu") (the CPU's lists). "cuda": CUDA's SDPA kernel choice, native_dropout
    and float16 softmax, host tensors left out (and copied to the device when asked), CUDA's
    autocast lists, and for float16 the GradScaler kept with `optimizer` (none without one: a
    forward and loss alone need no scaler)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if autocast_dtype not in (None, "bfloat16", "float16"):
        raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {autocast_dtype!r}")
    dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
    if target == "cpu":
        yield StepKernels(None, (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else nullcontext)
        return
    with ExitStack() as stack:
        sdpa = stack.enter_context(cuda_sdpa_policy(arch))
        stack.enter_context(cuda_composites())
        stack.enter_context(cuda_host_copies())
        amp = stack.enter_context(autocast_cuda.cuda_autocast_kernels(dtype)) if dtype else None
        scaler = None
        if dtype == torch.float16 and optimizer is not None:
            from enact_bench.predict.amp_scaler import scaler_for
            scaler = scaler_for(optimizer)
        yield StepKernels(sdpa, amp.region if amp is not None else nullcontext, scaler, HOST_OPS)
