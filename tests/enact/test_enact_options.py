"""Each option of EnactConfig tested for the property it promises (docs/enact.md, Options)."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from enact import EnactAttention, EnactConfig
from enact_bench.instrument.live_tensors import LiveTensorTracker

C, HEADS = 32, 4


def _module(seed=0, **cfg):
    torch.manual_seed(seed)
    return EnactAttention(C, HEADS, EnactConfig(**cfg))


def _detr_padding(sizes, H, W):
    """DETR's mask: image b is valid on its top-left (h_b, w_b) corner. (B, H*W), True = padding."""
    mask = torch.ones(len(sizes), H, W, dtype=torch.bool)
    for b, (h, w) in enumerate(sizes):
        mask[b, :h, :w] = False
    return mask.flatten(1)


@pytest.mark.parametrize("cluster_size", [None, 3])
@pytest.mark.parametrize("scope", ["batch", "image"])
def test_mask_padding_padded_values_do_not_reach_valid_outputs(cluster_size, scope):
    H, W = 10, 14
    mask = _detr_padding([(10, 14), (7, 9), (9, 5)], H, W)  # (B, S)
    m = _module(mask_padding=True, cluster_scope=scope, cluster_size=cluster_size)
    torch.manual_seed(1)
    src, pos = torch.randn(H * W, 3, C), torch.randn(H * W, 3, C)
    out1, _ = m(src + pos, src + pos, src, key_padding_mask=mask)
    stats1 = m.last_stats
    pad = mask.t().unsqueeze(-1)  # (S, B, 1)
    src2 = torch.where(pad, 100 * torch.randn_like(src), src)
    pos2 = torch.where(pad, -50 * torch.randn_like(pos), pos)
    out2, _ = m(src2 + pos2, src2 + pos2, src2, key_padding_mask=mask)
    valid = ~pad.expand_as(out1)
    assert torch.equal(out1[valid], out2[valid])
    assert m.last_stats == stats1
    assert stats1["key_len_before"] == [140, 63, 45]


def test_mask_padding_valid_part_equals_the_unpadded_image_alone():
    """With mask_padding and one L per image, a padded image's valid positions give what the image
    gives on its own without padding: no window mixes padding with valid pixels."""
    H, W, (h, w) = 9, 12, (6, 8)
    mask = _detr_padding([(H, W), (h, w)], H, W)
    m = _module(mask_padding=True, cluster_scope="image")
    torch.manual_seed(2)
    src, pos = torch.randn(H * W, 2, C), torch.randn(H * W, 2, C)
    out, _ = m(src + pos, src + pos, src, key_padding_mask=mask)
    stats = m.last_stats
    keep = ~mask[1]
    alone_src, alone_pos = src[keep, 1:2], pos[keep, 1:2]  # (h*w, 1, C): the image cropped
    alone, _ = m(alone_src + alone_pos, alone_src + alone_pos, alone_src)
    assert m.last_stats["cluster_size"] == [stats["cluster_size"][1]]
    assert m.last_stats["key_len_after"] == [stats["key_len_after"][1]]
    assert (out[keep, 1] - alone[:, 0]).abs().max().item() <= 1e-5


def test_without_mask_padding_the_mask_is_ignored_like_the_release():
    m = _module()
    x = torch.randn(60, 2, C)
    mask = torch.zeros(2, 60, dtype=torch.bool)
    mask[1, 30:] = True
    assert torch.equal(m(x, x, x, key_padding_mask=mask)[0], m(x, x, x)[0])


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_image_scope_output_does_not_depend_on_batch_mates(backend):
    m = _module(cluster_scope="image", backend=backend)
    torch.manual_seed(0)
    x = torch.randn(180, 3, C)
    x[:, 1] *= 0.2
    out, _ = m(x, x, x)
    sizes = m.last_stats["cluster_size"]
    assert len(set(sizes)) > 1  # the case exercises different L within one batch
    for b in range(3):
        alone, _ = m(x[:, b:b + 1], x[:, b:b + 1], x[:, b:b + 1])
        assert m.last_stats["cluster_size"] == [sizes[b]]
        assert (out[:, b] - alone[:, 0]).abs().max().item() <= 1e-5
    # and with batch scope the same batch shares one L
    mb = _module(backend=backend)
    mb(x, x, x)
    assert isinstance(mb.last_stats["cluster_size"], int)


@pytest.mark.parametrize("cfg", [
    dict(scale="standard"), dict(scale="reference"), dict(scale="standard", cluster_scope="image"),
    dict(scale="standard", mask_padding=True), dict(scale="reference", mask_padding=True, cluster_size=4),
])
def test_sdpa_equals_math(cfg):
    torch.manual_seed(3)
    x = torch.randn(150, 2, C)
    x[:, 1] *= 0.3
    mask = _detr_padding([(10, 15), (6, 11)], 10, 15)
    m_math, m_sdpa = _module(backend="math", **cfg), _module(backend="sdpa", **cfg)
    m_sdpa.load_state_dict(m_math.state_dict())
    xs = [x.clone().requires_grad_() for _ in range(2)]
    out_math, _ = m_math(xs[0], xs[0], xs[0], key_padding_mask=mask)
    out_sdpa, _ = m_sdpa(xs[1], xs[1], xs[1], key_padding_mask=mask)
    assert m_math.last_stats == m_sdpa.last_stats
    assert (out_math - out_sdpa).abs().max().item() <= 1e-5
    out_math.pow(2).mean().backward()
    out_sdpa.pow(2).mean().backward()
    assert torch.allclose(xs[0].grad, xs[1].grad, rtol=1e-4, atol=1e-7)
    for (n, a), (_, b) in zip(m_math.named_parameters(), m_sdpa.named_parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), n


def test_sdpa_stores_no_weight_matrix():
    B, S = 2, 300
    torch.manual_seed(4)
    x = torch.randn(S, B, C, requires_grad=True)
    saved, peaks = {}, {}
    for backend in ("math", "sdpa"):
        m = _module(backend=backend, scale="standard", cluster_size=4)  # n = 75 keys
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            out, _ = m(x, x, x)
        saved[backend] = shapes
        m.zero_grad()
        with LiveTensorTracker(count_existing=False) as tracker:
            out, _ = m(x, x, x)
            out.pow(2).mean().backward()
        peaks[backend] = tracker.peak_bytes
        del out
    weights = (B, HEADS, S, 75)
    assert weights in saved["math"]  # the math path keeps softmax(QK^T) for backward
    assert not any(s[-2:] == (S, 75) for s in saved["sdpa"])
    assert peaks["math"] - peaks["sdpa"] >= 4 * B * HEADS * S * 75  # at least one S x n fp32 matrix


@pytest.mark.parametrize("mask_padding", [False, True])
def test_fixed_cluster_size_compiles_fullgraph(mask_padding):
    m = _module(cluster_size=4, mask_padding=mask_padding)
    x = torch.randn(120, 2, C)
    mask = _detr_padding([(8, 15), (5, 9)], 8, 15)
    expect, _ = m(x, x, x, key_padding_mask=mask)
    compiled = torch.compile(m, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    got, _ = compiled(x, x, x, key_padding_mask=mask)
    assert torch.equal(got, expect)
    assert m.last_stats["key_len_after"] == ([30, 11] if mask_padding else 30)


@pytest.mark.parametrize("mask_padding", [False, True])
def test_fixed_cluster_size_runs_under_fake_tensors(mask_padding):
    m = _module(cluster_size=6, mask_padding=mask_padding)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(850, 2, C, requires_grad=True)
        mask = torch.zeros(2, 850, dtype=torch.bool)
        out, _ = m(x, x, x, key_padding_mask=mask)
        out.pow(2).mean().backward()
        assert out.shape == (850, 2, C) and x.grad.shape == x.shape
    stats = m.last_stats
    assert stats["cluster_size"] == 6
    assert stats["key_len_after"] == (None if mask_padding else 141)  # per-image values unknown when fake


def test_one_host_transfer_per_forward(monkeypatch):
    """The data-dependent L costs exactly one device->host transfer (a single .tolist());
    a fixed L costs none. No .item() anywhere."""
    calls = []
    real = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: calls.append(t.shape) or real(t))

    from torch.utils._python_dispatch import TorchDispatchMode

    class CountItem(TorchDispatchMode):
        items = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountItem.items += 1
            return func(*args, **(kwargs or {}))

    x = torch.randn(180, 3, C)
    x[:, 1] *= 0.2
    mask = _detr_padding([(12, 15), (10, 9), (12, 15)], 12, 15)
    for cfg, expected in [(dict(), 1), (dict(cluster_scope="image"), 1), (dict(mask_padding=True), 1),
                          (dict(mask_padding=True, cluster_scope="image"), 1), (dict(cluster_size=5), 0),
                          (dict(cluster_size=5, mask_padding=True), 0)]:
        m = _module(**cfg)
        calls.clear()
        with CountItem():
            m(x, x, x, key_padding_mask=mask)
        assert len(calls) == expected, cfg
    assert CountItem.items == 0


def test_need_weights_and_batch_first():
    m = _module(backend="sdpa")
    x = torch.randn(100, 2, C)
    out, w = m(x, x, x, need_weights=True)
    n = m.last_stats["key_len_after"]
    assert w.shape == (2, 100, n)
    assert torch.allclose(w.sum(-1), torch.full((2, 100), 1.0 / m.head_dim))  # reference scale: rows sum to 1/d
    assert torch.allclose(out, m(x, x, x)[0], atol=1e-6)
    mb = EnactAttention(C, HEADS, m.config, batch_first=True)
    mb.load_state_dict(m.state_dict())
    xb = x.transpose(0, 1)
    assert torch.allclose(mb(xb, xb, xb)[0].transpose(0, 1), out, atol=1e-6)


def test_bad_inputs_say_what_was_expected():
    m = _module()
    x = torch.randn(20, 2, C)
    with pytest.raises(ValueError, match="attn_mask"):
        m(x, x, x, attn_mask=torch.zeros(20, 20, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(S, B, 32\)"):
        m(x, x[:, :, :16], x[:, :, :16])
    with pytest.raises(ValueError, match="exceeds the key length 20"):
        _module(cluster_size=21)(x, x, x)
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        _module(mask_padding=True)(x, x, x, key_padding_mask=torch.zeros(20, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive multiple of num_heads"):
        EnactAttention(30, 4)


def test_bfloat16_statistics_in_float32_on_cpu():
    m = _module().to(torch.bfloat16)
    x = torch.randn(200, 2, C, dtype=torch.bfloat16)
    out, _ = m(x, x, x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    m32 = _module().float()
    m32(x.float(), x.float(), x.float())
    assert abs(m.last_stats["cluster_size"] - m32.last_stats["cluster_size"]) <= 1


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(dtype):
    m32 = _module().cuda()
    m = _module().cuda().to(dtype)
    torch.manual_seed(5)
    x = torch.randn(850, 2, C, device="cuda")
    out32, _ = m32(x, x, x)
    xh = x.to(dtype).requires_grad_()
    out, _ = m(xh, xh, xh)
    out.float().pow(2).mean().backward()
    assert out.dtype == dtype and torch.isfinite(out).all() and torch.isfinite(xh.grad).all()
    if m.last_stats == m32.last_stats:
        assert (out.float() - out32).abs().max().item() <= 5e-2


@pytest.mark.gpu
def test_one_sync_per_forward_on_cuda():
    import warnings

    m = _module().cuda()
    x = torch.randn(850, 2, C, device="cuda")
    m(x, x, x)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m(x, x, x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len([w for w in caught if "synchroniz" in str(w.message)]) <= 1
