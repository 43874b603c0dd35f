"""FLOPs of a forward (or forward+backward) with torch.utils.flop_counter.FlopCounterMode.

FlopCounterMode counts 2 FLOPs per multiply-add for matmuls, convolutions and the fused
attention ops it knows. In torch 2.14 it already has formulas for the CUDA fused attention
kernels (_scaled_dot_product_{flash,efficient,cudnn}_attention and their backwards,
_flash_attention_*, _efficient_attention_*) but none for:

- aten._scaled_dot_product_flash_attention_for_cpu (+ _backward): the CPU fused SDPA kernel,
- aten._scaled_dot_product_fused_attention_overrideable (+ _backward): other backends,
- aten._native_multi_head_attention: nn.MultiheadAttention's inference fast path,

so those are registered here (same formulas as torch's for the CUDA kernels: QK^T and AV,
and the four matmuls of the backward). Multi-scale deformable attention's registered op,
`enact_bench::ms_deform_attn` and its backward, registers its own formula where it is defined
(enact_bench/detectors/common/ms_deform_attn_op.py: 5 multiply-adds per query, head, level,
point and channel forward, 20 backward), so the deformable detectors' default path is counted
in full; their PyTorch reference path (msda="pytorch") shows `aten.grid_sampler_2d` (+ backward)
as uncounted. Any other op that looks like a contraction (matmul,
convolution, attention, grid sampling, deformable attention) or that comes from a custom op
namespace and has no formula is listed in `uncounted_ops`: its cost is missing from the total.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils import flop_counter as fc
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def _shape(x):
    return x.shape if isinstance(x, torch.Tensor) else x


def _sdpa_fwd(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_flop_count(_shape(query), _shape(key), _shape(value))


def _sdpa_bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(_shape(grad_out), _shape(query), _shape(key), _shape(value))


def _native_mha(query, key, value, embed_dim, num_head, *args, out_shape=None, **kwargs) -> int:
    """Input projections, QK^T, AV and the output projection of (B, S, E) inputs."""
    b, sq, e = _shape(query)
    sk = _shape(key)[1]
    proj = 2 * b * (sq + 2 * sk) * e * e + 2 * b * sq * e * e
    attn = 2 * b * sq * sk * e * 2
    return proj + attn


EXTRA_FORMULAS: dict = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_bwd,
    aten._scaled_dot_product_fused_attention_overrideable: _sdpa_fwd,
    aten._scaled_dot_product_fused_attention_overrideable_backward: _sdpa_bwd,
    aten._native_multi_head_attention: _native_mha,
}
for _f in EXTRA_FORMULAS.values():
    _f._get_raw = False  # let FlopCounterMode turn tensors into shapes

_CONTRACTION = re.compile(
    r"(^|_)(mm|bmm|addmm|baddbmm|addbmm|addmv|mv|dot|vdot|matmul|linear|einsum|tensordot|"
    r"scaled_mm|int_mm)($|_)|conv|attention|attn|grid_sampler|deform")
_SAFE_NAMESPACES = ("aten", "prims", "_ops", "profiler")  # profiler: record_function markers


@dataclass
class FlopReading:
    flops: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted_ops: list[str] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def _uncounted(seen, registry) -> list[str]:
    out = set()
    for packet in seen:
        if packet in registry:
            continue
        name = str(packet)  # e.g. "aten.mm"
        ns, _, op = name.partition(".")
        if ns not in _SAFE_NAMESPACES or _CONTRACTION.search(op):
            out.add(name)
    return sorted(out)


def count_flops(fn: Callable[[], object]) -> FlopReading:
    """Run fn once under FlopCounterMode (with the extra formulas) and an op recorder."""
    counter = fc.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS)
    recorder = _OpRecorder()
    with counter, recorder:
        fn()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return FlopReading(flops=int(counter.get_total_flops()), by_op=by_op,
                       uncounted_ops=_uncounted(recorder.seen, counter.flop_registry))
