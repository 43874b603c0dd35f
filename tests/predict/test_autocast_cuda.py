"""CUDA's autocast on fake CPU tensors (predict/autocast_cuda.py), held to PyTorch's own
AutocastCUDA kernels, which run here on fake CUDA tensors (predict/fake_cuda_reference.py
cuda_autocast_state): every op of the tables, called through the dispatcher, gives the output
dtypes CUDA's kernel gives."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.predict import autocast_cuda
from enact_bench.predict.autocast_cuda import cuda_autocast_kernels, cuda_policy_table, table_mismatch
from enact_bench.predict.fake_cuda_reference import cuda_autocast_state

aten = torch.ops.aten


def _samples():
    """op overload name -> fn(T, I) returning (args, kwargs); T(*shape) makes a floating tensor
    of the case's dtype, I(*shape) an int64 one of zeros."""
    conv2d = lambda T, I: ((T(1, 2, 5, 5), T(3, 2, 3, 3), T(3)), {})  # noqa: E731
    unary = lambda T, I: ((T(2, 3),), {})  # noqa: E731
    pair = lambda T, I: ((T(2, 3), T(2, 3)), {})  # noqa: E731
    triple = lambda T, I: ((T(2, 3), T(2, 3), T(2, 3)), {})  # noqa: E731
    up1 = lambda T, I: ((T(1, 2, 4), [8]), {})  # noqa: E731
    up2 = lambda T, I: ((T(1, 2, 4, 4), [8, 8]), {})  # noqa: E731
    up3 = lambda T, I: ((T(1, 2, 2, 2, 2), [4, 4, 4]), {})  # noqa: E731
    s = {
        "_convolution.deprecated": lambda T, I: ((T(1, 2, 5, 5), T(3, 2, 3, 3), T(3), [1, 1], [0, 0], [1, 1], False,
                                                  [0, 0], 1, False, False, True), {}),
        "_convolution": lambda T, I: ((T(1, 2, 5, 5), T(3, 2, 3, 3), T(3), [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                       False, False, True, True), {}),
        "conv1d": lambda T, I: ((T(1, 2, 5), T(3, 2, 3), T(3)), {}),
        "conv2d": conv2d,
        "conv3d": lambda T, I: ((T(1, 2, 4, 4, 4), T(3, 2, 3, 3, 3)), {}),
        "conv_tbc": lambda T, I: ((T(5, 1, 2), T(3, 2, 3), T(3)), {}),
        "conv_transpose1d": lambda T, I: ((T(1, 2, 5), T(2, 3, 3)), {}),
        "conv_transpose2d.input": lambda T, I: ((T(1, 2, 5, 5), T(2, 3, 3, 3)), {}),
        "conv_transpose3d.input": lambda T, I: ((T(1, 2, 4, 4, 4), T(2, 3, 3, 3, 3)), {}),
        "convolution": lambda T, I: ((T(1, 2, 5, 5), T(3, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
                                     {}),
        "prelu": lambda T, I: ((T(2, 3), T(1)), {}),
        "addmm": lambda T, I: ((T(2, 2), T(2, 3), T(3, 2)), {}),
        "addmv": lambda T, I: ((T(2), T(2, 3), T(3)), {}),
        "addr": lambda T, I: ((T(2, 3), T(2), T(3)), {}),
        "matmul": lambda T, I: ((T(2, 3), T(3, 4)), {}),
        "einsum": lambda T, I: (("ij,jk->ik", [T(2, 3), T(3, 4)]), {}),
        "mm": lambda T, I: ((T(2, 3), T(3, 4)), {}),
        "mv": lambda T, I: ((T(2, 3), T(3)), {}),
        "linalg_vecdot": pair,
        "linear": lambda T, I: ((T(2, 3), T(4, 3), T(4)), {}),
        "addbmm": lambda T, I: ((T(2, 4), T(3, 2, 5), T(3, 5, 4)), {}),
        "baddbmm": lambda T, I: ((T(3, 2, 4), T(3, 2, 5), T(3, 5, 4)), {}),
        "bmm": lambda T, I: ((T(3, 2, 5), T(3, 5, 4)), {}),
        "chain_matmul": lambda T, I: (([T(2, 3), T(3, 4), T(4, 2)],), {}),
        "linalg_multi_dot": lambda T, I: (([T(2, 3), T(3, 4), T(4, 2)],), {}),
        # with biases: CUDA's cells call _thnn_fused_*_cell, whose meta kernel needs them
        "lstm_cell": lambda T, I: ((T(2, 4), [T(2, 3), T(2, 3)], T(12, 4), T(12, 3), T(12), T(12)), {}),
        "rnn_tanh_cell": lambda T, I: ((T(2, 4), T(2, 3), T(3, 4), T(3, 3)), {}),
        "rnn_relu_cell": lambda T, I: ((T(2, 4), T(2, 3), T(3, 4), T(3, 3)), {}),
        "scaled_dot_product_attention": lambda T, I: ((T(1, 2, 4, 8), T(1, 2, 6, 8), T(1, 2, 6, 8)), {}),
        "_scaled_dot_product_flash_attention": lambda T, I: ((T(1, 2, 4, 8), T(1, 2, 6, 8), T(1, 2, 6, 8)), {}),
        "pow.Tensor_Scalar": lambda T, I: ((T(2, 3), 2), {}),
        "pow.Tensor_Tensor": pair,
        "pow.Scalar": lambda T, I: ((2.0, T(2, 3)), {}),
        "layer_norm": lambda T, I: ((T(2, 3), [3], T(3), T(3)), {}),
        "native_layer_norm": lambda T, I: ((T(2, 3), [3], T(3), T(3), 1e-5), {}),
        "rms_norm": lambda T, I: ((T(2, 3), [3], T(3)), {}),
        "group_norm": lambda T, I: ((T(2, 4, 3), 2, T(4), T(4)), {}),
        "frobenius_norm.dim": lambda T, I: ((T(2, 3), [0, 1]), {}),
        "nuclear_norm": lambda T, I: ((T(3, 3),), {}),
        "nuclear_norm.dim": lambda T, I: ((T(3, 3), [0, 1]), {}),
        "cosine_similarity": pair,
        "poisson_nll_loss": lambda T, I: ((T(2, 3), T(2, 3), True, False, 1e-8, 1), {}),
        "cosine_embedding_loss": lambda T, I: ((T(2, 3), T(2, 3), T(2)), {}),
        "nll_loss": lambda T, I: ((T(2, 3), I(2)), {}),
        "nll_loss2d": lambda T, I: ((T(2, 3, 4, 4), I(2, 4, 4)), {}),
        "hinge_embedding_loss": pair,
        "kl_div": pair,
        "l1_loss": pair,
        "smooth_l1_loss": pair,
        "huber_loss": pair,
        "mse_loss": pair,
        "margin_ranking_loss": lambda T, I: ((T(3), T(3), T(3)), {}),
        "multilabel_margin_loss": lambda T, I: ((T(2, 3), I(2, 3)), {}),
        "soft_margin_loss": pair,
        "triplet_margin_loss": triple,
        "multi_margin_loss": lambda T, I: ((T(2, 3), I(2)), {}),
        "binary_cross_entropy_with_logits": pair,
        "dist": pair,
        "pdist": lambda T, I: ((T(3, 2),), {}),
        "cdist": lambda T, I: ((T(2, 3), T(4, 3)), {}),
        "renorm": lambda T, I: ((T(2, 3), 2, 0, 1.0), {}),
        "logsumexp": lambda T, I: ((T(2, 3), [1]), {}),
        "upsample_nearest1d": up1, "_upsample_nearest_exact1d": up1,
        "upsample_nearest2d": up2, "_upsample_nearest_exact2d": up2,
        "upsample_nearest3d": up3, "_upsample_nearest_exact3d": up3,
        "upsample_linear1d": lambda T, I: ((T(1, 2, 4), [8], False), {}),
        "upsample_bilinear2d": lambda T, I: ((T(1, 2, 4, 4), [8, 8], False), {}),
        "_upsample_bilinear2d_aa": lambda T, I: ((T(1, 2, 4, 4), [8, 8], False), {}),
        "upsample_trilinear3d": lambda T, I: ((T(1, 2, 2, 2, 2), [4, 4, 4], False), {}),
        "upsample_bicubic2d": lambda T, I: ((T(1, 2, 4, 4), [8, 8], False), {}),
        "_upsample_bicubic2d_aa": lambda T, I: ((T(1, 2, 4, 4), [8, 8], False), {}),
        "linalg_matrix_sqrth": lambda T, I: ((T(3, 3),), {}),
        "prod": unary,
        "prod.dim_int": lambda T, I: ((T(2, 3), 1), {}),
        "softmax.int": lambda T, I: ((T(2, 3), 1), {}),
        "log_softmax.int": lambda T, I: ((T(2, 3), 1), {}),
        "cumprod": lambda T, I: ((T(2, 3), 1), {}),
        "cumsum": lambda T, I: ((T(2, 3), 1), {}),
        "linalg_vector_norm": unary,
        "linalg_matrix_norm": lambda T, I: ((T(3, 3), 1), {}),
        "linalg_matrix_norm.str_ord": lambda T, I: ((T(3, 3),), {}),
        "sum": unary,
        "sum.dim_IntList": lambda T, I: ((T(2, 3), [1]), {}),
        "norm.Scalar": unary,
        "norm.ScalarOpt_dim": lambda T, I: ((T(2, 3), 2, [1]), {}),
        "addcdiv": triple,
        "addcmul": triple,
        "atan2": pair,
        "bilinear": lambda T, I: ((T(2, 3), T(2, 4), T(5, 3, 4)), {}),
        "cross": pair,
        "dot": lambda T, I: ((T(3), T(3)), {}),
        "vdot": lambda T, I: ((T(3), T(3)), {}),
        "grid_sampler": lambda T, I: ((T(1, 2, 4, 4), T(1, 3, 3, 2), 0, 0, False), {}),
        "index_put": lambda T, I: ((T(4, 3), [I(2)], T(2, 3)), {}),
        "tensordot": lambda T, I: ((T(2, 3), T(3, 4), [1], [0]), {}),
        "scatter_add": lambda T, I: ((T(2, 3), 0, I(2, 3), T(2, 3)), {}),
        "binary_cross_entropy": pair,
    }
    for name in ("acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal",
                 "rsqrt", "sinh", "tan", "softplus"):
        s[name] = unary
    return s


SAMPLES = _samples()
# ops of the tables without a sample: they have no kernel that runs on fake tensors on one of the
# two devices (so the comparison cannot be made), named so that none is dropped silently
NO_SAMPLE = {
    "cudnn_convolution", "cudnn_convolution_transpose",  # CUDA-only kernels, never reached on CPU
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell",  # CUDA-only kernels (the cells' fused path)
    "gru_cell",  # on CUDA it calls _thnn_fused_gru_cell, which has no fake (meta) kernel
}


def test_tables_match_the_dispatcher_of_this_torch():
    missing, extra = table_mismatch()
    assert not missing, f"ops with an AutocastCUDA kernel not in the tables: {sorted(missing)}"
    assert not extra, f"ops in the tables without an AutocastCUDA kernel: {sorted(extra)}"


def test_every_table_op_has_a_sample_or_a_reason():
    assert set(SAMPLES) | NO_SAMPLE == set(cuda_policy_table())
    assert not set(SAMPLES) & NO_SAMPLE


def _dtypes(out):
    if isinstance(out, torch.Tensor):
        return out.dtype
    if isinstance(out, (tuple, list)):
        return tuple(_dtypes(o) for o in out)
    return type(out).__name__


def _run(name: str, device: str, dtype: torch.dtype, low: torch.dtype, first: torch.dtype | None = None):
    """The op's output dtypes on `device` under autocast to `low`: "cuda" with PyTorch's own
    AutocastCUDA kernels, "cpu" with ours. `first`: the first floating tensor's dtype (mixed inputs)."""
    op = autocast_cuda._overload(name)
    made = []

    def T(*shape):
        made.append(None)
        d = first if (first is not None and len(made) == 1) else dtype
        return torch.randn(*shape, device=device).to(d)

    def I(*shape):  # noqa: E743
        return torch.zeros(*shape, dtype=torch.int64, device=device)

    args, kwargs = SAMPLES[name](T, I)
    try:
        return _dtypes(op(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 -- the error is compared too (banned ops)
        return f"raises {type(e).__name__}"


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_each_op_gives_cuda_autocasts_output_dtype(low):
    mismatches = {}
    with FakeTensorMode():
        for inputs in ("float32", "low", "mixed"):
            dtype = torch.float32 if inputs == "float32" else low
            first = torch.float32 if inputs == "mixed" else None
            with cuda_autocast_state(low):
                cuda = {n: _run(n, "cuda", dtype, low, first) for n in SAMPLES}
            with cuda_autocast_kernels(low) as amp, amp.region():
                ours = {n: _run(n, "cpu", dtype, low, first) for n in SAMPLES}
            mismatches.update({(n, inputs): (cuda[n], ours[n]) for n in SAMPLES if cuda[n] != ours[n]})
            if inputs == "float32":  # the comparison is not empty: casts happened and differ from no autocast
                assert cuda["linear"] == ours["linear"] == low
                assert cuda["softmax.int"] == ours["softmax.int"] == torch.float32
                assert cuda["binary_cross_entropy"].startswith("raises")
    assert not mismatches, f"(op, inputs): (CUDA autocast, ours) {mismatches}"


def test_cpu_autocast_comes_back_after_the_block():
    with FakeTensorMode():
        x = torch.randn(4, 8)
        with cuda_autocast_kernels(torch.bfloat16) as amp, amp.region():
            inside = torch.softmax(x.bfloat16(), -1).dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            after = torch.softmax(x.bfloat16(), -1).dtype
    assert inside == torch.float32  # CUDA's list: softmax in float32
    assert after == torch.bfloat16  # the CPU's list again: softmax not in it


def test_a_parameter_is_cast_once_per_region_and_the_copy_freed_at_its_end():
    with FakeTensorMode():
        w = torch.nn.Parameter(torch.randn(8, 8))
        x = torch.randn(4, 8)
        with cuda_autocast_kernels(torch.bfloat16) as amp:
            with amp.region():
                F.linear(x, w)
                F.linear(x, w)
                assert amp.casts == 3  # x twice (not a leaf parameter), w once (autocast_mode.cpp cached_cast)
                assert len(amp._cache) == 1
            assert len(amp._cache) == 0
