"""FLOP counting against exact counts: matmul, fused CPU SDPA (= its math path), MHA fast path."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from enact_bench.instrument.flops import count_flops


def test_matmul_flops_are_exact():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    r = count_flops(lambda: a @ b)
    assert r.flops == 2 * 64 * 32 * 16
    assert r.gmacs == 64 * 32 * 16 / 1e9 and r.gflops == 2 * r.gmacs
    assert r.uncounted_ops == []


def _math_sdpa(q, k, v):
    w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v


def test_cpu_fused_sdpa_counted_like_its_math_path():
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    k = torch.randn(2, 4, 10, 8, requires_grad=True)
    v = torch.randn(2, 4, 10, 8, requires_grad=True)
    fused = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in fused.by_op
    math = count_flops(lambda: _math_sdpa(q, k, v))
    assert fused.flops == math.flops == 2 * (2 * 4 * 16 * 10 * 8) * 2
    fused_bwd = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    math_bwd = count_flops(lambda: _math_sdpa(q, k, v).sum().backward())
    assert "aten._scaled_dot_product_flash_attention_for_cpu_backward" in fused_bwd.by_op
    # torch's formula for the fused backward (as for the CUDA kernels) counts the recomputation
    # of Q K^T: 5 matmuls, against the math path's 4 (its forward saved the weights)
    unit = 2 * 2 * 4 * 16 * 10 * 8
    assert math_bwd.flops == (2 + 4) * unit
    assert fused_bwd.flops == (2 + 5) * unit


def test_mha_fast_path_counted_like_the_slow_path():
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, 16)
    m.eval()
    with torch.no_grad():
        fast = count_flops(lambda: m(x, x, x, need_weights=False))
    assert "aten._native_multi_head_attention" in fast.by_op
    m.train()  # training mode takes the composite path (linear + attention)
    slow = count_flops(lambda: m(x, x, x, need_weights=False))
    assert fast.flops == slow.flops


def test_ops_without_formula_are_listed():
    lib = torch.library.Library("enact_bench_test", "FRAGMENT")
    lib.define("contract(Tensor a, Tensor b) -> Tensor")
    lib.impl("contract", lambda a, b: a @ b, "CompositeExplicitAutograd")
    a, b = torch.randn(4, 3), torch.randn(3, 2)
    r = count_flops(lambda: torch.ops.enact_bench_test.contract(a, b))
    assert "enact_bench_test.contract" in r.uncounted_ops


def test_deformable_detectors_have_no_uncounted_ops():
    """msda="op" (the default): the registered op and its backward have formulas."""
    from enact_bench.detectors import create_detector

    for name in ("deformable_detr_tiny_two_stage", "dino_tiny"):
        torch.manual_seed(0)
        model = create_detector(name).train()
        images = [torch.randn(3, 64, 80), torch.randn(3, 48, 64)]
        fwd = count_flops(lambda: model(images))
        both = count_flops(lambda: sum(v.sum() for k, v in model(images).items() if k == "pred_logits").backward())
        assert fwd.uncounted_ops == [] and both.uncounted_ops == [], name
        assert fwd.by_op["enact_bench.ms_deform_attn"] > 0
        assert both.by_op["enact_bench.ms_deform_attn_backward"] == 4 * both.by_op["enact_bench.ms_deform_attn"]
