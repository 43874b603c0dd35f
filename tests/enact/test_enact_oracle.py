"""Equivalence with the released DETR-ENACT code (GSavathrakis/ENACT, ClustAttn), via the cases
it computed: the small committed ones (tests/enact/reference/, sigma 3 and 5, batch 1-3) and the
larger shared one where present (see the `oracle_case` fixture in tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from enact import EnactAttention, EnactConfig, ops

# Gradients that are zero in exact arithmetic: adding a constant to every key's logit (W_k's bias
# dotted with q) or to every position's W_prob logit leaves the softmax unchanged. The oracle
# holds rounding noise there (~1e-12 against gradients of ~1e-6), so a relative test is void.
EXACTLY_ZERO_GRADS = ("W_k.bias", "W_prob.bias")


def _module(case, backend):
    m = EnactAttention(case["meta"]["C"], case["meta"]["ctor"]["n_heads"],
                       EnactConfig.reference(case["meta"]["ctor"]["sigma"]).replace(backend=backend))
    m.load_state_dict(case["state_dict"], strict=True)
    return m


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_output_cluster_size_and_key_length(oracle_case, backend):
    m = _module(oracle_case, backend)
    inp = oracle_case["inputs"]
    meta, mid = oracle_case["meta"], oracle_case["intermediates"]
    S = meta["H"] * meta["W"]
    out, weights = m(inp["q"], inp["k"], inp["v"])
    assert weights is None
    assert out.shape == oracle_case["output"].shape == (S, meta["B"], meta["C"])
    assert (out - oracle_case["output"]).abs().max().item() <= 1e-5
    assert m.last_stats == {"cluster_size": mid["clst_sh"], "key_len_before": S, "key_len_after": mid["n_clusters"]}


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_gradients_of_mean_squared_output(oracle_case, backend):
    m = _module(oracle_case, backend)
    inp = oracle_case["inputs"]
    m(inp["q"], inp["k"], inp["v"])[0].pow(2).mean().backward()
    grads = oracle_case["grads_loss_mean_out_sq"]
    g_max = max(g.abs().max().item() for g in grads.values())
    for name, p in m.named_parameters():
        ref = grads[name]
        diff = (p.grad - ref).abs().max().item()
        if name in EXACTLY_ZERO_GRADS:
            assert ref.abs().max().item() <= 1e-6 * g_max  # the premise: noise, not signal
            assert p.grad.abs().max().item() <= 1e-6 * g_max, name
        else:
            assert diff <= 1e-4 * ref.abs().max().item(), f"{name}: max rel diff {diff / ref.abs().max().item():.2e}"


def test_intermediates(oracle_case):
    m = _module(oracle_case, "sdpa")
    inp, mid = oracle_case["inputs"], oracle_case["intermediates"]
    sigma, B = oracle_case["meta"]["ctor"]["sigma"], oracle_case["meta"]["B"]
    S = oracle_case["meta"]["H"] * oracle_case["meta"]["W"]
    assert torch.equal(ops.gaussian_taps(sigma), oracle_case["non_buffer_constants"]["gaussian_kernel"])
    logits = m.W_prob(inp["k"]).squeeze(-1).t()  # (S, B, 1) -> (B, S)
    assert torch.allclose(logits, mid["W_prob_logits"].squeeze(-1), atol=1e-6)
    e = ops.smooth(ops.entropy_bits(logits), sigma)
    assert (e - mid["entropy_smoothed"]).abs().max().item() <= 1e-6
    d = ops.second_derivative(e)
    assert (d - mid["second_derivative_conv"]).abs().max().item() <= 1e-6
    steps = ops.step(d)
    assert torch.equal(steps.long(), mid["step"])
    means = ops.mean_run_length(steps)
    assert torch.allclose(means.double(), mid["per_image_mean_run_length"], rtol=1e-6, atol=0)
    L = ops.cluster_size(means.tolist())
    assert L == mid["clst_sh"]
    front, n = ops.trim_bounds(S, L)
    assert (front, S - front - n * L, n) == (mid["trim_front"], mid["trim_back"], mid["n_clusters"])
    w = F.softmax(e[:, front:front + n * L].reshape(B, n, L), -1)
    assert torch.allclose(w, mid["cluster_weights"], atol=1e-6)
    pk = ops.window_pool(inp["k"], e, L, front, n)  # (n, B, C)
    pv = ops.window_pool(inp["v"], e, L, front, n)
    assert torch.allclose(pk.transpose(0, 1), mid["k_clustered_pre_proj"], atol=1e-5)
    assert torch.allclose(pv.transpose(0, 1), mid["v_clustered_pre_proj"], atol=1e-5)
    # the attention weights the release builds (before its division by head_dim)
    out, weights = m(inp["q"], inp["k"], inp["v"], need_weights=True, average_attn_weights=False)
    ref_w = mid["attn_softmax_before_div_dhead"].permute(1, 0, 2, 3) / m.head_dim  # (h, B, S, n) -> (B, h, S, n)
    assert (weights - ref_w).abs().max().item() <= 1e-6
    assert (out - oracle_case["output"]).abs().max().item() <= 1e-5


class _PostNormLayer(nn.Module):
    """The release's encoder layer (post-norm, ReLU), built around EnactAttention."""

    def __init__(self, C, heads, ff, config):
        super().__init__()
        self.self_attn = EnactAttention(C, heads, config)
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.linear1, self.linear2 = nn.Linear(C, ff), nn.Linear(ff, C)

    def forward(self, q, k, v):
        v = self.norm1(v + self.self_attn(q, k, v)[0])
        return self.norm2(v + self.linear2(F.relu(self.linear1(v))))


def test_full_encoder_layer(oracle_case):
    lc = oracle_case["meta"]["layer_ctor"]
    assert lc["activation"] == "relu"
    layer = _PostNormLayer(lc["d_model"], lc["nhead"], lc["dim_feedforward"],
                           EnactConfig.reference(lc["sigma"])).eval()
    layer.load_state_dict(oracle_case["layer"]["state_dict"], strict=True)
    inp = oracle_case["inputs"]
    with torch.no_grad():
        out = layer(inp["q"], inp["k"], inp["v"])
    assert (out - oracle_case["layer"]["output_eval"]).abs().max().item() <= 1e-5
