"""ENACT token clustering for deformable encoders (enact/tokens.py; docs/detectors-deformable.md)."""
from __future__ import annotations

import pytest
import torch

from enact import EnactConfig, ops
from enact.tokens import TokenClustering, level_cluster_size_from_data, level_smoothed_entropy
from enact_bench.detectors import create_detector


def test_level_statistics_and_windows_match_the_released_enact(oracle_case):
    """One level of H x W tokens = the oracle's sequence: same smoothed entropy, same L, same
    trimming and the same pooled windows as the released DETR-ENACT code."""
    k = oracle_case["inputs"]["k"].transpose(0, 1)  # (S, B, C) -> (B, S, C)
    inter, meta = oracle_case["intermediates"], oracle_case["meta"]
    B, C, H, W, sigma = meta["B"], meta["C"], meta["H"], meta["W"], meta["ctor"]["sigma"]
    clustering = TokenClustering(C, EnactConfig.reference(sigma))
    clustering.W_prob.load_state_dict({"weight": oracle_case["state_dict"]["W_prob.weight"],
                                       "bias": oracle_case["state_dict"]["W_prob.bias"]})
    with torch.no_grad():
        smoothed = level_smoothed_entropy(clustering.W_prob(k).squeeze(-1), sigma)
        torch.testing.assert_close(smoothed, inter["entropy_smoothed"], rtol=1e-5, atol=1e-7)
        assert level_cluster_size_from_data(smoothed) == inter["clst_sh"]

        seen = {}

        def layer_fn(q_src, q_pos, q_ref):
            seen["q_src"], seen["q_ref"] = q_src, q_ref
            return q_src

        out = clustering(layer_fn, k, None, torch.zeros(B, H * W, 1, 2), [(H, W)])
    front, n = inter["trim_front"], inter["n_clusters"]
    q_src = seen["q_src"]
    assert q_src.shape == (B, front + n + inter["trim_back"], C)
    torch.testing.assert_close(q_src[:, front:front + n], inter["k_clustered_pre_proj"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_src[:, :front], k[:, :front])  # trimmed tokens stay single
    torch.testing.assert_close(out, k)  # a layer that changes nothing changes no token
    assert clustering.last_stats["cluster_size"] == [inter["clst_sh"]]
    assert clustering.last_stats["tokens_after"] == [front + n + inter["trim_back"]]


def test_cluster_updates_are_broadcast_and_pos_ref_pooled_alike():
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 4)]  # 20 + 8 tokens; L = 3: 20 -> 1 + 6 windows + 1, 8 -> 1 + 2 windows + 1
    src = torch.randn(2, 28, 8)
    pos = 3 * src  # pooled with the same weights -> stays 3 x the pooled src
    ref = src[..., :2, None].expand(2, 28, 2, 2).transpose(2, 3)  # (B, S, 2 levels, 2)
    clustering = TokenClustering(8, EnactConfig(cluster_size=3))
    seen = {}

    def layer_fn(q_src, q_pos, q_ref):
        seen.update(q_src=q_src, q_pos=q_pos, q_ref=q_ref)
        return 2 * q_src + 1  # update = q_src + 1

    out = clustering(layer_fn, src, pos, ref, shapes)
    q_src = seen["q_src"]
    assert q_src.shape == (2, 8 + 4, 8)
    torch.testing.assert_close(seen["q_pos"], 3 * q_src)
    torch.testing.assert_close(seen["q_ref"], q_src[..., :2, None].expand(2, 12, 2, 2).transpose(2, 3))

    # the expected result, window by window, from the level's own smoothed entropy
    with torch.no_grad():
        logits = clustering.W_prob(src + pos).squeeze(-1)
    expected = torch.empty_like(src)
    for start, n_tok in ((0, 20), (20, 8)):
        e = level_smoothed_entropy(logits[:, start:start + n_tok], 3.0)
        front, n = ops.trim_bounds(n_tok, 3)
        assert front == 1
        w = e[:, front:front + 3 * n].reshape(2, n, 3).softmax(-1)  # (B, n, 3)
        for c in range(n):
            idx = slice(start + front + 3 * c, start + front + 3 * c + 3)
            pooled = (w[:, c, :, None] * src[:, idx]).sum(1)  # (B, C)
            expected[:, idx] = src[:, idx] + pooled[:, None] + 1
        for single in (start, start + n_tok - 1):  # clusters of one: their own layer output
            expected[:, single] = 2 * src[:, single] + 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert clustering.last_stats == {"cluster_size": [3, 3], "tokens_before": [20, 8], "tokens_after": [8, 4],
                                     "query_len_before": 28, "query_len_after": 12,
                                     "key_len_before": 28, "key_len_after": 28}


@pytest.mark.parametrize("name", ["deformable_detr_tiny", "deformable_detr_tiny_two_stage"])
def test_cluster_size_one_equals_the_baseline(name):
    torch.manual_seed(0)
    base = create_detector(name, num_classes=5).eval()
    clustered = create_detector(name, num_classes=5, enact=EnactConfig(cluster_size=1)).eval()
    report = clustered.load_state_dict(base.state_dict(), strict=False)
    assert set(report.missing_keys) == {f"transformer.encoder.enact_clustering.{i}.W_prob.{k}"
                                        for i in range(2) for k in ("weight", "bias")}
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 72)]
    with torch.no_grad():
        a, b = base(images), clustered(images)
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], rtol=1e-4, atol=1e-5)
    stats = clustered.enact_stats()
    assert len(stats) == 2 and stats[0]["tokens_after"] == stats[0]["tokens_before"]


def test_decoder_and_proposals_get_the_full_length_sequence():
    torch.manual_seed(0)
    model = create_detector("deformable_detr_tiny_two_stage", num_classes=5, enact=True).eval()
    seen = {}
    model.transformer.decoder.register_forward_pre_hook(lambda mod, args: seen.update(memory=args[2]))
    images = [torch.randn(3, 96, 128), torch.randn(3, 96, 128)]
    with torch.no_grad():
        out = model(images)
    # levels of a 96 x 128 image: strides 8, 16, 32, 64 -> 12x16, 6x8, 3x4, 2x2
    total = 12 * 16 + 6 * 8 + 3 * 4 + 2 * 2
    assert seen["memory"].shape == (2, total, 64)
    assert out["enc_outputs"]["pred_logits"].shape[1] == total  # one proposal per encoder token
    stats = model.enact_stats()
    assert len(stats) == 2
    for s in stats:
        assert s["tokens_before"] == [192, 48, 12, 4]
        for n, size, after in zip(s["tokens_before"], s["cluster_size"], s["tokens_after"]):
            assert after == n // size + n % size
        assert s["key_len_after"] == s["key_len_before"] == total


def test_unsupported_options_raise_clear_errors():
    with pytest.raises(ValueError, match="cluster_scope='batch'"):
        TokenClustering(8, EnactConfig(cluster_scope="image"))
    with pytest.raises(ValueError, match="mask_padding"):
        TokenClustering(8, EnactConfig(mask_padding=True))
