"""The CUDA target of the fake-tensor estimate: each modelled difference against the quantity it
changes (predict/cuda_policy.py, docs/gpu-estimate.md "The CUDA target")."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.predict.cuda_policy import CudaArch, cuda_sdpa_policy, sdpa_backend
from tests.estimate_helpers import estimate_detector
from enact_bench.instrument.step_probe import SavedTensorCounter

B, H, L, S, E = 2, 8, 100, 70, 32
SM90, SM80, SM70 = CudaArch(9, 0), CudaArch(8, 0), CudaArch(7, 0)


def _qkv(dtype=torch.float32, e=E, requires_grad=True):
    return tuple(torch.randn(B, H, n, e, dtype=dtype, requires_grad=requires_grad) for n in (L, S, S))


@pytest.mark.parametrize("dtype, mask, dropout, arch, expected", [
    (torch.float32, False, 0.1, SM90, "efficient"),  # flash needs fp16/bf16; cuDNN too
    (torch.float32, True, 0.1, SM90, "efficient"),  # mem-efficient takes an additive mask
    (torch.bfloat16, False, 0.1, SM80, "flash"),
    (torch.bfloat16, True, 0.1, SM80, "efficient"),  # flash rejects any attn_mask
    (torch.bfloat16, False, 0.1, SM90, "flash"),  # cuDNN: dropout 0.1 is not a multiple of 1/16
    (torch.bfloat16, False, 0.0, SM90, "cudnn"),  # cuDNN first on sm90 (check_prefer_cudnn_attention)
    (torch.bfloat16, False, 0.1, SM70, "math"),  # no flash below sm80; efficient: fp16/fp32 only
    (torch.float16, True, 0.1, SM70, "efficient"),
])
def test_sdpa_backend_follows_sdp_utils(dtype, mask, dropout, arch, expected):
    q, k, v = _qkv(dtype)
    m = torch.zeros(B, 1, 1, S, dtype=dtype) if mask else None
    assert sdpa_backend(q, k, v, m, dropout, arch=arch) == expected


def test_sdpa_backend_shape_and_alignment_rules():
    q, k, v = _qkv(torch.float32, e=30)  # 30 % 4 != 0: the fp32 gemm alignment on sm80+
    assert sdpa_backend(q, k, v, None, 0.0, arch=SM90) == "math"
    q3 = torch.randn(B * H, L, E)  # 3-D inputs: every fused kernel needs 4-D
    assert sdpa_backend(q3, q3, q3, None, 0.0, arch=SM90) == "math"
    q, k, v = _qkv(torch.float32)
    assert sdpa_backend(q.transpose(-1, -2).contiguous().transpose(-1, -2), k, v, arch=SM90) == "math"  # stride(-1) != 1


def _saved_by_sdpa(policy: bool, dtype=torch.float32, mask=None, arch=SM90):
    with FakeTensorMode():
        q, k, v = _qkv(dtype)
        m = None if mask is None else torch.zeros(mask, dtype=dtype)
        ctx = cuda_sdpa_policy(arch) if policy else contextlib.nullcontext(None)
        with ctx as sdpa:
            counter = SavedTensorCounter(exclude=[q, k, v])
            with counter.counting():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=0.1)
        return counter.saved_bytes, out, (dict(sdpa.counts) if sdpa else {})


def test_cuda_efficient_sdpa_saves_output_and_logsumexp_only():
    saved, out, counts = _saved_by_sdpa(True)
    assert counts == {"efficient": 1}
    out_bytes = B * H * L * E * 4
    lse_bytes = B * H * ((L + 31) // 32 * 32) * 4  # attention.cu: logsumexp padded to 32 queries
    assert saved == out_bytes + lse_bytes + 2 * 8  # + philox seed and offset (int64 scalars)
    # with a (B, 1, 1, S) mask: the padded copy preprocess_mask makes (S -> multiple of 8) is saved too
    saved_m, _, _ = _saved_by_sdpa(True, mask=(B, 1, 1, S))
    assert saved_m - saved == B * 1 * 1 * (S + (8 - S % 8)) * 4


def test_cpu_math_sdpa_with_dropout_stores_the_weights_and_the_mask():
    saved_cpu, _, _ = _saved_by_sdpa(False)
    saved_cuda, _, _ = _saved_by_sdpa(True)
    weights, dropout_mask = B * H * L * S * 4, B * H * L * S * 1
    assert saved_cpu >= weights + dropout_mask
    assert saved_cpu - saved_cuda >= weights + dropout_mask - (B * H * L * E * 4 + B * H * 128 * 4 + 16)


def test_cuda_flash_sdpa_saves_output_and_logsumexp_only():
    saved, out, counts = _saved_by_sdpa(True, dtype=torch.bfloat16, arch=SM80)
    assert counts == {"flash": 1}
    # output (bf16) + logsumexp (B, H, L) fp32 + RNG state (2 x uint64) + offset (uint64)
    assert saved == B * H * L * E * 2 + B * H * L * 4 + 16 + 8


def test_mha_need_weights_true_is_unchanged_by_the_cuda_target():
    with FakeTensorMode():
        mha = torch.nn.MultiheadAttention(64, 8, dropout=0.1)
        x = torch.randn(L, B, 64)
        results = []
        for policy in (False, True):
            ctx = cuda_sdpa_policy() if policy else contextlib.nullcontext(None)
            with ctx as sdpa:
                counter = SavedTensorCounter(exclude=list(mha.parameters()))
                with counter.counting():
                    mha(x, x, x, need_weights=True)
            results.append((counter.saved_bytes, dict(sdpa.counts) if sdpa else {}))
    assert results[0][0] == results[1][0]
    assert results[1][1] == {}  # need_weights=True never calls SDPA
    assert results[0][0] >= B * 8 * L * L * 4  # the (B, h, L, L) weights are stored


def test_foreach_adamw_adds_one_copy_of_the_largest_param_group():
    """detr_tiny: the CUDA target's peak is the optimizer step's, where _multi_tensor_adamw holds
    torch._foreach_sqrt(exp_avg_sqs) (one tensor per parameter of the group) beside the state."""
    from enact_bench.detectors import create_detector

    cuda = estimate_detector("detr_tiny", 2, (128, 160), target="cuda", count_flops=False)
    cpu = estimate_detector("detr_tiny", 2, (128, 160), target="cpu", count_flops=False)
    model = create_detector("detr_tiny")
    groups = model.param_groups()
    largest = max(sum(p.numel() * p.element_size() for p in g["params"] if p.requires_grad) for g in groups)
    assert cuda.peak_bytes - cuda.end_bytes == largest + 4  # + the 0-dim fp32 loss train_step returns
    assert cuda.peak_bytes > cpu.peak_bytes  # the issue's +15 MiB (+7.5%) on detr_tiny
    assert round((cuda.peak_bytes - cpu.peak_bytes) / 2**20) == 15
    assert cpu.start_bytes == cuda.start_bytes  # the same parameters, gradients, AdamW state, batch


def test_cpu_target_is_the_default_and_unchanged():
    default = estimate_detector("detr_tiny", 2, (128, 160), count_flops=False)
    cpu = estimate_detector("detr_tiny", 2, (128, 160), target="cpu", count_flops=False)
    assert default.peak_bytes == cpu.peak_bytes and default.target == "cpu"
    assert default.sdpa_kernels == {}


def test_bad_target_is_an_error():
    with pytest.raises(ValueError, match="target must be one of"):
        estimate_detector("detr_tiny", 1, (64, 64), target="gpu")


@pytest.mark.slow
def test_cpu_target_matches_the_ci_baseline_byte_for_byte():
    """The CI gate's full-size fake cases (suites/ci.toml) read the same bytes as the baseline."""
    base = json.loads((Path(__file__).parents[2] / "suites/baselines/ci-cpu.json").read_text())
    cid = "detr_r50-base-train-b2-800x1333-fake=True"
    expected = base["cases"][cid]["metrics"]["fake_tracked_peak_bytes"]
    got = estimate_detector("detr_r50", 2, (800, 1333), target="cpu", count_flops=False)
    assert got.peak_bytes == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detr_tiny", "conditional_detr_tiny", "anchor_detr_tiny", "deformable_detr_tiny",
                                  "dino_tiny"])
def test_primed_state_equals_a_warm_up_step(name):
    """prime_optimizer_state (no warm-up step) leaves what a warm-up step leaves: same peak
    (DINO with its denoising queries, as it trains)."""
    from enact import EnactConfig

    for enact in (False, EnactConfig(cluster_size=4)):
        a = estimate_detector(name, 2, (128, 160), enact=enact, target="cuda", warmup="step", count_flops=False)
        b = estimate_detector(name, 2, (128, 160), enact=enact, target="cuda", warmup="prime", count_flops=False)
        assert (a.peak_bytes, a.start_bytes, a.end_bytes) == (b.peak_bytes, b.start_bytes, b.end_bytes)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_a_fake_dino_step_trains_with_its_denoising_queries(target, monkeypatch):
    """DINO's contrastive denoising under fake tensors (the label noise is shape-stable there):
    dino_tiny's dn_number with the estimate's 6 boxes per image gives the release's group count
    x 2 x 6 extra decoder queries (dino_r50_4scale, dn_number 100: 16 x 2 x 6 = 192), which cost
    memory beside the step without them (dn_number=0)."""
    import enact_bench.detectors.dino as dino
    from enact_bench.detectors import create_detector
    from enact_bench.detectors.dino_denoising import num_dn_groups

    metas = []
    real = dino.prepare_cdn

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        metas.append(out[3])
        return out

    monkeypatch.setattr(dino, "prepare_cdn", spy)
    with_dn = estimate_detector("dino_tiny", 2, (128, 160), target=target, warmup="prime", count_flops=False)
    groups = num_dn_groups(create_detector("dino_tiny").cfg.dn_number, 6)
    assert [(m.pad_size, m.num_groups, m.single_pad) for m in metas] == [(2 * 6 * groups, groups, 6)]
    assert groups > 1 and num_dn_groups(create_detector("dino_r50_4scale").cfg.dn_number, 6) == 16
    without = estimate_detector("dino_tiny", 2, (128, 160), target=target, warmup="prime", count_flops=False,
                                overrides={"dn_number": 0})
    assert len(metas) == 1  # dn_number=0: no denoising queries
    assert with_dn.start_bytes == without.start_bytes  # same weights (label_enc exists either way), state, batch
    assert with_dn.saved_for_backward_bytes > without.saved_for_backward_bytes
    assert with_dn.peak_bytes > without.peak_bytes
