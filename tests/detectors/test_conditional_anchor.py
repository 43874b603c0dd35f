"""Conditional DETR and Anchor DETR: the originals' layouts and counts, RCDA maths, ENACT placement,
batch independence of Anchor's ENACT, focal-loss pieces and top-k post-processing.

Figures marked "original" were read from models built by Atten4Vis/ConditionalDETR,
megvii-research/AnchorDETR and the ENACT release (GSavathrakis/ENACT) with their default arguments.
"""
import hashlib

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.detectors.rcda import MultiheadRCDA

from detector_helpers import images, targets

# name, enact -> (parameters, state_dict entries, sha256 of the keys in order, first 16 hex digits)
ORIGINAL_LAYOUT = {
    ("conditional_detr_r50", False): (43_418_401, 564, "8d90d884baad8d61"),
    ("conditional_detr_r101", True): (62_359_847, 855, "b33dc42448778ded"),
    ("anchor_detr_r50_dc5", False): (37_038_711, 507, "e36c0274fd73c00a"),
    ("anchor_detr_r50_dc5", True): (37_040_253, 519, "a14ae50c8f719086"),
}


@pytest.mark.parametrize("key", sorted(ORIGINAL_LAYOUT, key=str), ids=lambda k: f"{k[0]}-{'enact' if k[1] else 'base'}")
def test_full_size_counts_and_keys_match_the_originals(key):
    name, enact = key
    with torch.device("meta"):
        model = create_detector(name, enact=enact)
    params, entries, digest = ORIGINAL_LAYOUT[key]
    keys = list(model.state_dict().keys())
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(keys) == entries
    assert hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16] == digest


# trainable parameters (stem and layer1 frozen), from the originals' builds
ORIGINAL_TRAINABLE = {
    "conditional_detr_r50": 43_196_001,
    "conditional_detr_r50_dc5": 43_196_001,
    "conditional_detr_r101": 62_135_905,
    "anchor_detr_r50_dc5": 36_816_311,
    "anchor_detr_r50": 36_816_311,
}


@pytest.mark.parametrize("name", sorted(ORIGINAL_TRAINABLE))
def test_trainable_counts_match_the_originals(name):
    with torch.device("meta"):
        model = create_detector(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == ORIGINAL_TRAINABLE[name]
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [1e-4, 1e-5]
    assert sum(p.numel() for g in groups for p in g["params"]) == ORIGINAL_TRAINABLE[name]


def test_full_size_variant_details():
    with torch.device("meta"):
        cond = create_detector("conditional_detr_r101_dc5")
        anchor = create_detector("anchor_detr_r50")
    assert cond.backbone.strides == [16] and cond.num_queries == 300
    assert anchor.backbone.strides == [32] and anchor.num_queries == 900
    # Conditional DETR: only the first decoder layer adds the query position to the content query
    keys = cond.state_dict()
    assert "transformer.decoder.layers.0.ca_qpos_proj.weight" in keys
    assert not any(k.startswith("transformer.decoder.layers.1.ca_qpos_proj") for k in keys)
    # Anchor DETR: one class/box head shared by every decoder layer, listed per layer
    shared = anchor.transformer.class_embed
    assert all(m is shared[0] for m in shared) and len(shared) == 6
    assert "backbone.body.conv1.weight" in anchor.state_dict()


@pytest.mark.parametrize("name", ["conditional_detr_tiny", "anchor_detr_tiny"])
def test_enact_changes_only_the_encoder_self_attention(name):
    base = create_detector(name).state_dict()
    enact = create_detector(name, enact=True).state_dict()
    only_base = set(base) - set(enact)
    only_enact = set(enact) - set(base)
    assert only_enact
    encoder = ("transformer.encoder.layers.", "transformer.encoder_layers.")
    for k in only_base | only_enact:
        assert k.startswith(encoder), k
        assert ".self_attn." in k or ".ENACT." in k, k
    for k in set(base) & set(enact):
        assert base[k].shape == enact[k].shape, k


def test_anchor_enact_defaults_to_the_release_sigma():
    from enact import EnactConfig

    assert create_detector("anchor_detr_tiny", enact=True).enact_config.sigma == 5.0
    assert create_detector("anchor_detr_tiny", enact=True, enact_sigma=3.0).enact_config.sigma == 3.0
    custom = EnactConfig.reference().replace(cluster_size=2)
    assert create_detector("anchor_detr_tiny", enact=custom).enact_config == custom
    assert create_detector("conditional_detr_tiny", enact=True).enact_config.sigma == 3.0
    with pytest.raises(ValueError, match="cluster_scope='batch' and mask_padding=False"):
        create_detector("anchor_detr_tiny", enact=EnactConfig(mask_padding=True))


def test_anchor_enact_keeps_images_apart():
    """With a fixed cluster size an image's output must not depend on its batch neighbour. The
    ENACT release's reshape (transpose before reshape) mixes the images of a batch: we do not."""
    from enact import EnactConfig

    torch.manual_seed(0)
    model = create_detector("anchor_detr_tiny", enact=EnactConfig.reference().replace(cluster_size=3)).eval()
    imgs = images(sizes=[(64, 96), (64, 96)])
    with torch.no_grad():
        both = model(imgs)["pred_logits"]
        first = model(imgs[:1])["pred_logits"]
        second = model(imgs[1:])["pred_logits"]
    assert torch.allclose(both[0], first[0], atol=1e-5)
    assert torch.allclose(both[1], second[0], atol=1e-5)
    stats = model.enact_stats()
    assert len(stats) == 2 and stats[0]["cluster_size"] == 3
    assert stats[0]["key_len_after"] == stats[0]["key_len_before"] // 3


def _rcda_by_definition(m: MultiheadRCDA, q_row, q_col, k_row, k_col, v, mask):
    """out[l] = sum_{i, j} softmax_i(q_col k_col^T)[l, i] softmax_j(q_row k_row^T)[l, j] v[i, j]."""
    c, h = m.embed_dim, m.num_heads
    W, b = m.in_proj_weight.split(c), m.in_proj_bias.split(c)
    split = lambda x: x.unflatten(-1, (h, c // h))  # (..., C) -> (..., heads, d)
    qr, qc = split(q_row @ W[0].T + b[0]), split(q_col @ W[1].T + b[1])  # (N, L, h, d)
    kr = split((k_row @ W[2].T + b[2]).mean(1))  # (N, W, h, d)
    kc = split((k_col @ W[3].T + b[3]).mean(2))  # (N, H, h, d)
    vv = split(v @ W[4].T + b[4])  # (N, H, W, h, d)
    scale = (c // h) ** -0.5
    a_row = torch.einsum("nlhd,nwhd->nhlw", qr * scale, kr).masked_fill(mask[:, 0, :][:, None, None], float("-inf"))
    a_col = torch.einsum("nlhd,nihd->nhli", qc * scale, kc).masked_fill(mask[:, :, 0][:, None, None], float("-inf"))
    out = torch.einsum("nhli,nhlw,niwhd->nlhd", a_col.softmax(-1), a_row.softmax(-1), vv)
    return m.out_proj(out.flatten(2))


@pytest.mark.parametrize("hw", [(3, 5), (5, 3), (4, 4)])  # both contraction orders of the original
def test_rcda_matches_its_definition(hw):
    torch.manual_seed(0)
    h, w = hw
    m = MultiheadRCDA(16, 4).eval()
    torch.nn.init.normal_(m.in_proj_bias, std=0.1)
    q_row, q_col = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    k_row, k_col, v = torch.randn(2, h, w, 16), torch.randn(2, h, w, 16), torch.randn(2, h, w, 16)
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    mask[1, -1:, :] = True
    mask[1, :, -1:] = True
    got = m(q_row, q_col, k_row, k_col, v, key_padding_mask=mask)
    assert torch.allclose(got, _rcda_by_definition(m, q_row, q_col, k_row, k_col, v, mask), atol=1e-5)


def test_rcda_over_pooled_tokens_matches_its_definition():
    """The release's encoder form: full-resolution row/column queries, n pooled keys/values,
    each pixel weighted by the product of its row and column softmaxes (not renormalised)."""
    torch.manual_seed(0)
    m = MultiheadRCDA(16, 4).eval()
    c, nh, d = 16, 4, 4
    pk_row, pk_col, pv = torch.randn(2, 5, c), torch.randn(2, 5, c), torch.randn(2, 5, c)
    map_row, map_col = torch.randn(2, 3, 4, c), torch.randn(2, 3, 4, c)
    W, b = m.in_proj_weight.split(c), m.in_proj_bias.split(c)
    split = lambda x: x.unflatten(-1, (nh, d))
    kr, kc = split(pk_row @ W[0].T + b[0]) * d**-0.5, split(pk_col @ W[1].T + b[1]) * d**-0.5  # (N, n, h, d)
    qr = split((map_row @ W[2].T + b[2]).mean(1))  # (N, W, h, d)
    qc = split((map_col @ W[3].T + b[3]).mean(2))  # (N, H, h, d)
    v = split(pv @ W[4].T + b[4])
    a_row = torch.einsum("nwhd,nkhd->nhwk", qr, kr).softmax(-1)
    a_col = torch.einsum("nihd,nkhd->nhik", qc, kc).softmax(-1)
    expected = m.out_proj(torch.einsum("nhik,nhwk,nkhd->niwhd", a_col, a_row, v).flatten(3))
    assert torch.allclose(m.forward_enact(pk_row, pk_col, map_row, map_col, pv), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["conditional_detr_tiny", "anchor_detr_tiny"])
def test_focal_loss_setup_is_the_originals(name):
    model = create_detector(name)
    crit = model.build_criterion()
    w = crit.weight_dict
    assert (w["loss_ce"], w["loss_bbox"], w["loss_giou"]) == (2.0, 5.0, 2.0)
    assert w["loss_ce_0"] == 2.0 and "loss_giou_0" in w  # auxiliary decoder outputs (2 layers -> 1 aux)
    assert ("loss_ce_enc" in w) == name.startswith("anchor")  # listed by Anchor DETR's weight_dict
    m = crit.matcher
    assert (m.cost_class, m.cost_bbox, m.cost_giou) == (2.0, 5.0, 2.0)
    assert crit.focal_alpha == 0.25
    # focal-loss prior on the class bias: sigmoid = 0.01 before any training
    head = model.class_embed if hasattr(model, "class_embed") else model.transformer.class_embed[0]
    assert torch.allclose(head.bias.sigmoid(), torch.full_like(head.bias, 0.01))
    losses = crit(model(images(sizes=[(64, 64), (48, 64)])), targets(num_classes=91)[:2])
    assert set(losses) >= {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0"}
    assert ("cardinality_error" in losses) == name.startswith("conditional")
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", ["conditional_detr_tiny", "anchor_detr_tiny"])
def test_postprocess_is_topk_over_sigmoid_scores(name):
    model = create_detector(name, num_classes=4)
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, 1, 2] = 3.0  # best: query 1, class 2
    logits[0, 2, 0] = 1.0  # second: query 2, class 0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]]])
    res = model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    assert len(res["scores"]) == 12  # min(100, queries x classes)
    assert res["labels"][:2].tolist() == [2, 0]
    assert torch.allclose(res["scores"][:2], torch.tensor([3.0, 1.0]).sigmoid())
    assert torch.allclose(res["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))  # w=200, h=100
    assert torch.allclose(res["boxes"][1], torch.tensor([0.0, 0.0, 100.0, 50.0]))



def test_conditional_sdpa_mode_gives_the_same_numbers():
    """attention="sdpa": the encoder's and the decoder's self- and cross-attention (whose q/k and
    v head sizes differ) through SDPA, with the padding mask: the same outputs."""
    torch.manual_seed(0)
    mha = create_detector("conditional_detr_tiny").eval()
    sdpa = create_detector("conditional_detr_tiny", attention="sdpa").eval()
    sdpa.load_state_dict(mha.state_dict())
    layers = sdpa.transformer.decoder.layers
    assert all(not (l.self_attn.need_weights or l.cross_attn.need_weights) for l in layers)
    assert all(l.cross_attn.need_weights for l in mha.transformer.decoder.layers)
    imgs = images(sizes=[(64, 96), (80, 64)])
    with torch.no_grad():
        a, b = mha(imgs), sdpa(imgs)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=1e-6, rtol=0)


def test_anchor_enact_layers_selects_a_subset():
    model = create_detector("anchor_detr_tiny", enact=True, enact_layers=[1]).eval()
    assert [hasattr(layer, "ENACT") for layer in model.transformer.encoder_layers] == [False, True]
    with torch.no_grad():
        model(images(sizes=[(96, 128)]))
    stats = model.enact_stats()
    assert len(stats) == 1 and stats[0]["key_len_before"] == 3 * 4  # 96x128 / 32
    assert stats[0]["key_len_after"] == 12 // stats[0]["cluster_size"]


@pytest.mark.parametrize("variant", ["base", "enact", "enact_masked"])
def test_conditional_padding_mask_hides_padded_features(variant):
    """Baseline and ENACT with mask_padding ignore features at padded positions; the release's
    ENACT (reference preset) does not use the mask, so there they change."""
    from enact import EnactConfig

    enact = {"base": False, "enact": True}.get(variant) if variant != "enact_masked" else EnactConfig(mask_padding=True)
    torch.manual_seed(0)
    model = create_detector("conditional_detr_tiny", enact=enact).eval()
    c = model.transformer.d_model
    src, pos = torch.randn(2, c, 6, 7), torch.randn(2, c, 6, 7)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    mask[1, 4:, :] = True
    mask[1, :, 5:] = True
    noisy = src.clone()
    noisy[mask[:, None].expand_as(src)] = torch.randn(int(mask.sum()) * c)
    with torch.no_grad():
        hs, _ = model.transformer(src, mask, model.query_embed.weight, pos)
        hs_noisy, _ = model.transformer(noisy, mask, model.query_embed.weight, pos)
    if variant == "enact":
        assert not torch.allclose(hs[:, 1], hs_noisy[:, 1], atol=1e-4)
    else:
        torch.testing.assert_close(hs, hs_noisy, atol=1e-5, rtol=0)
