"""The registered deformable-attention op (enact_bench::ms_deform_attn): numbers against a direct
per-sample computation and the autograd reference path, gradcheck, opcheck, what it allocates
(fake and real), autocast, its FLOP formula against a count by hand, and the CUDA dispatch."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

from enact_bench.detectors.common import ms_deform_attn_op as op
from enact_bench.detectors.common.ms_deform_attn import LevelShapes, ms_deform_attn_core
from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.instrument.flops import count_flops

from detector_helpers import msda_direct as direct

SHAPES = [(5, 7), (3, 2), (1, 1)]  # mixed level sizes, one of a single pixel


def inputs(n=2, lq=4, m=2, d=3, p=2, shapes=SHAPES, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    # locations partly outside [0, 1]: the zero padding of the kernel and of grid_sample
    loc = torch.rand(n, lq, m, len(shapes), p, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, len(shapes), p, generator=g, dtype=dtype)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    levels = LevelShapes(shapes)
    spatial_shapes, level_start = levels.tensors("cpu")
    if grad:
        value, loc, attn = (t.requires_grad_() for t in (value, loc, attn))
    return value, spatial_shapes, level_start, loc, attn


def test_forward_matches_direct_sampling_and_the_reference_path():
    value, ss, lsi, loc, attn = inputs()
    got = op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    want, _ = direct(value, SHAPES, loc, attn)
    assert got.shape == (2, 4, 6) and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got, ms_deform_attn_core(value, SHAPES, loc, attn), rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    value, ss, lsi, loc, attn = inputs(n=1, lq=3, grad=True, seed=1)
    assert torch.autograd.gradcheck(lambda v, l, a: op.ms_deform_attn(v, ss, lsi, l, a, 64), (value, loc, attn))


def test_backward_calls_what_autograd_of_the_reference_calls_float64():
    """Per level, grid_sampler_2d_backward on the same value map and grid: the same gradients."""
    value, ss, lsi, loc, attn = inputs(grad=True, seed=4)
    g = torch.randn(2, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(op.ms_deform_attn(value, ss, lsi, loc, attn, 64), (value, loc, attn), g)
    want = torch.autograd.grad(ms_deform_attn_core(value, SHAPES, loc, attn), (value, loc, attn), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


def test_gradients_equal_the_reference_paths_float32():
    value, ss, lsi, loc, attn = inputs(n=2, lq=6, m=4, d=8, p=3, dtype=torch.float32, grad=True, seed=2)
    g = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(3))
    out_op = op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    out_ref = ms_deform_attn_core(value, SHAPES, loc, attn)
    torch.testing.assert_close(out_op, out_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(out_op, (value, loc, attn), g),
                    torch.autograd.grad(out_ref, (value, loc, attn), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_opcheck_both_ops():
    value, ss, lsi, loc, attn = inputs(grad=True)
    opcheck(op.ms_deform_attn, (value, ss, lsi, loc, attn, 64))
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64)
    opcheck(op.ms_deform_attn_backward, (value.detach(), ss, lsi, loc.detach(), attn.detach(), grad_out, 64))


def test_autograd_saves_exactly_the_inputs():
    value, ss, lsi, loc, attn = inputs(grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    assert [t.untyped_storage().data_ptr() for t in packed] == \
        [t.untyped_storage().data_ptr() for t in (value, ss, lsi, loc, attn)]


def _step_bytes(fn) -> int:
    with LiveTensorTracker(count_existing=False) as tracker:
        fn()
    return tracker.peak_bytes


@pytest.mark.parametrize("fake", [False, True])
def test_allocates_the_output_forward_and_three_gradients_backward(fake):
    """What a dispatch-mode tracker sees: the forward allocates (N, Lq, M*D), the backward op
    value-, locations- and weights-sized gradients, as the compiled kernel (its zeros and zeros_like)."""
    mode = FakeTensorMode() if fake else None
    with mode or torch.no_grad():
        value, ss, lsi, loc, attn = inputs(dtype=torch.float32)
        grad_out = torch.ones(2, 4, 6)
        fwd = _step_bytes(lambda: op.ms_deform_attn(value, ss, lsi, loc, attn, 64))
        bwd = _step_bytes(lambda: op.ms_deform_attn_backward(value, ss, lsi, loc, attn, grad_out, 64))
    assert fwd == 2 * 4 * 2 * 3 * 4  # N * Lq * M * D float32
    assert bwd == (value.numel() + loc.numel() + attn.numel()) * 4


def test_runs_in_float32_under_autocast():
    value, ss, lsi, loc, attn = inputs(dtype=torch.float32)
    want = op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = op.ms_deform_attn(value.bfloat16(), ss, lsi, loc, attn.bfloat16(), 64)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)  # bf16 inputs, float32 sampling


def test_flop_formula_equals_a_count_by_hand():
    n, lq, m, d, p, nl = 1, 2, 2, 3, 2, len(SHAPES)
    value, ss, lsi, loc, attn = inputs(n=n, lq=lq, m=m, d=d, p=p, grad=True)
    _, macs = direct(value.detach(), SHAPES, loc.detach(), attn.detach())
    # by hand: 1 image x 2 queries x 2 heads x 3 levels x 2 points x 3 channels = 72 samples,
    # each 4 bilinear taps + 1 weighted sum = 5 multiply-adds -> 360 MACs, 720 FLOPs
    assert macs == 72 * 5 == 360
    fwd = count_flops(lambda: op.ms_deform_attn(value, ss, lsi, loc, attn, 64))
    assert fwd.flops == 2 * 360 and fwd.uncounted_ops == []
    assert fwd.by_op == {"enact_bench.ms_deform_attn": 720}
    # backward, per sample: weights' gradient 4 + 1, value's 1 + 4, locations' 2 x 4 + 2 -> 20 MACs
    both = count_flops(lambda: op.ms_deform_attn(value, ss, lsi, loc, attn, 64).sum().backward())
    assert both.by_op["enact_bench.ms_deform_attn_backward"] == 2 * 72 * 20
    assert both.uncounted_ops == []


def test_kernel_im2col_step_always_divides_the_batch():
    # the kernel asserts batch % min(batch, step) == 0; the step only chunks the batch
    assert op._kernel_im2col_step(2, 64) == 2
    assert op._kernel_im2col_step(128, 64) == 64
    assert op._kernel_im2col_step(96, 64) == 32


def test_impl_is_recorded():
    value, ss, lsi, loc, attn = inputs()
    op.reset_msda_impls()
    op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    assert op.msda_impls_seen() == ["pytorch_op"]
    ms_deform_attn_core(value, SHAPES, loc, attn)
    assert op.msda_impls_seen() == ["pytorch_op", "pytorch_reference"]
    op.reset_msda_impls()
    assert op.msda_impls_seen() == []


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_matches_cpu_and_names_its_implementation(dtype):
    """On CUDA: the compiled extension when importable (float32/float64), else the PyTorch op."""
    value, ss, lsi, loc, attn = inputs(n=2, lq=6, m=4, d=8, p=3, dtype=torch.float64, grad=True)
    g = torch.randn(2, 6, 32, dtype=torch.float64)
    want = op.ms_deform_attn(value, ss, lsi, loc, attn, 64)
    want_grads = torch.autograd.grad(want, (value, loc, attn), g)
    cuda = [t.detach().cuda().to(dtype).requires_grad_() for t in (value, loc, attn)]
    op.reset_msda_impls()
    got = op.ms_deform_attn(cuda[0], ss.cuda(), lsi.cuda(), cuda[1], cuda[2], 64)
    got_grads = torch.autograd.grad(got, cuda, g.cuda().to(dtype))
    ext = op.compiled_extension() is not None and dtype != torch.float16
    assert op.msda_impls_seen() == (["cuda_ext"] if ext else ["pytorch_op"])
    tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 3e-2}[dtype]
    torch.testing.assert_close(got.double().cpu(), want.detach(), rtol=tol, atol=tol)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol * 10, atol=tol * 10)
