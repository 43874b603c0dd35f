"""Which SDPA kernel each call of a fake step would get on other GPUs, without running it again.

The fake step depends on the GPU only through `cuda_policy.sdpa_backend`: the compute capability
decides which fused kernels exist (flash needs sm80+ and half precision; cuDNN comes first on
sm90/sm10x for half precision; the memory-efficient kernel's alignment and dtypes change at sm80).
`SdpaCallLog` stands between F.scaled_dot_product_attention and the CUDA policy's stand-in during
a fake step and keeps what decides the kernel (shapes, strides, dtypes, requires_grad, the mask,
dropout, causal, GQA); `kernels_for` asks `sdpa_backend` again for another compute capability on
meta tensors of those shapes. Two GPUs whose kernels agree for every call make the same fake
step, so `enact-bench plan --gpu all` runs the fake steps once per such group.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

_TENSORS = ("query", "key", "value")


def _spec(t: torch.Tensor | None):
    if t is None:
        return None
    return tuple(t.shape), tuple(t.stride()), t.dtype, bool(t.requires_grad)


class SdpaCallLog:
    """F.scaled_dot_product_attention's stand-in during a fake step: records each call's
    kernel-deciding inputs in `calls`, then runs `inner` (the CUDA policy's CudaSdpa)."""

    _SIG = inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
                              for n, d in (("query", inspect.Parameter.empty), ("key", inspect.Parameter.empty),
                                           ("value", inspect.Parameter.empty), ("attn_mask", None),
                                           ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                                           ("enable_gqa", False))])

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple] = []

    def __call__(self, *args, **kwargs):
        a = self._SIG.bind(*args, **kwargs)
        a.apply_defaults()
        v = a.arguments
        self.calls.append((tuple(_spec(v[n]) for n in _TENSORS), _spec(v["attn_mask"]), float(v["dropout_p"]),
                           bool(v["is_causal"]), bool(v["enable_gqa"])))
        return self.inner(*args, **kwargs)

    @classmethod
    def install(cls, inner) -> "SdpaCallLog":
        """Put a log in front of `inner` as F.scaled_dot_product_attention (the CUDA policy's
        context restores the original on exit)."""
        log = cls(inner)
        F.scaled_dot_product_attention = log
        return log


def _meta(spec):
    if spec is None:
        return None
    shape, stride, dtype, grad = spec
    t = torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    return t.requires_grad_(grad) if grad and (dtype.is_floating_point or dtype.is_complex) else t


def kernels_for(calls, arch) -> tuple[str, ...]:
    """The kernel sdpa_backend picks for each recorded call on `arch` (a cuda_policy.CudaArch)."""
    from enact_bench.predict.cuda_policy import sdpa_backend

    out = []
    for (q, k, v), mask, dropout, causal, gqa in calls:
        out.append(sdpa_backend(_meta(q), _meta(k), _meta(v), _meta(mask), dropout, causal, gqa, arch))
    return tuple(out)
