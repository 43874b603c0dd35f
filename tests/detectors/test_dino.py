"""DINO: the release's layout and parameter count, contrastive denoising (groups, noise, attention
mask), the denoising losses, and tiny end-to-end checks with and without ENACT token clustering."""
from __future__ import annotations

import pytest
import torch

from enact_bench.detectors import create_detector, load_checkpoint
from enact_bench.detectors.dino_denoising import dn_attention_mask, dn_matching_indices, num_dn_groups, prepare_cdn

from detector_helpers import ENACT_PARAM, VARIANTS

RELEASE_PARAMS = 46_893_182  # sum of p.numel() over the release's model.parameters(), DINO_4scale defaults


def _targets():
    return [{"labels": torch.tensor([1, 3, 2]),
             "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.5, 0.6]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 64, 80, generator=g), torch.randn(3, 56, 64, generator=g)]


# --- layout of the release -------------------------------------------------------------------------
def test_release_parameter_count_and_aliased_keys():
    with torch.device("meta"):
        model = create_detector("dino_r50_4scale")
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMS
    keys = model.state_dict(keep_vars=True)
    assert len(keys) == 626
    assert keys["label_enc.weight"].shape == (92, 256)  # dn_labelbook_size 91 + 1
    assert keys["transformer.tgt_embed.weight"].shape == (900, 256)
    assert keys["transformer.decoder.ref_point_head.layers.0.weight"].shape == (256, 512)
    assert keys["transformer.decoder.layers.5.linear1.weight"].shape == (2048, 256)
    assert keys["input_proj.3.0.weight"].shape == (256, 2048, 3, 3)
    # one class head and one box MLP shared by the 6 decoder layers, also under transformer.decoder
    assert keys["class_embed.0.weight"] is keys["class_embed.5.weight"] is keys["transformer.decoder.class_embed.2.weight"]
    assert keys["bbox_embed.0.layers.2.bias"] is keys["transformer.decoder.bbox_embed.4.layers.2.bias"]
    # the encoder-proposal heads are separate copies
    assert keys["transformer.enc_out_class_embed.weight"] is not keys["class_embed.0.weight"]
    assert "query_embed.weight" not in keys and "transformer.reference_points.weight" not in keys


def test_enact_adds_only_w_prob_keys():
    with torch.device("meta"):
        base = create_detector("dino_r50_4scale")
        enact = create_detector("dino_r50_4scale", enact=True)
    extra = set(enact.state_dict()) - set(base.state_dict())
    assert extra == {f"transformer.encoder.enact_clustering.{i}.W_prob.{k}" for i in range(6) for k in ("weight", "bias")}


def test_weights_and_optimiser_follow_the_release():
    model = create_detector("dino_tiny")
    w = model.build_criterion().weight_dict
    assert (w["loss_ce"], w["loss_bbox"], w["loss_giou"]) == (1.0, 5.0, 2.0)
    assert (w["loss_ce_dn"], w["loss_bbox_dn_0"], w["loss_giou_interm"]) == (1.0, 5.0, 2.0)
    n_dec = model.cfg.dec_layers
    assert len(w) == 3 * (2 + 2 * (n_dec - 1) + 1)  # main, dn, aux + aux dn, interm
    rest, backbone = model.param_groups()
    assert (rest["lr"], backbone["lr"], rest["weight_decay"]) == (1e-4, 1e-5, 1e-4)
    assert model.grad_clip_max_norm == 0.1


# --- denoising -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dn_number, max_boxes, groups", [(100, 3, 33), (100, 1, 100), (100, 0, 1), (100, 150, 1),
                                                          (2, 3, 4), (2, 0, 1)])
def test_number_of_denoising_groups_is_the_releases(dn_number, max_boxes, groups):
    assert num_dn_groups(dn_number, max_boxes) == groups


def test_attention_mask_structure():
    pad, groups, q = 12, 3, 5  # 3 groups of 2 * 2 queries
    mask = dn_attention_mask(pad, groups, q)
    assert mask.shape == (pad + q, pad + q) and mask.dtype == torch.bool
    assert mask[pad:, :pad].all()  # matching queries cannot see denoising queries
    assert not mask[pad:, pad:].any()  # ... but see each other
    assert not mask[:pad, pad:].any()  # denoising queries see the matching queries
    size = pad // groups
    for i in range(pad):
        for j in range(pad):
            assert mask[i, j] == (i // size != j // size), (i, j)  # only their own group


def test_cdn_queries_noise_and_fixed_assignment():
    torch.manual_seed(0)
    label_enc = torch.nn.Embedding(8, 16)
    targets = _targets()
    content, anchors, mask, meta = prepare_cdn(targets, 2, 0.0, 0.4, 10, 7, 16, label_enc)
    assert (meta.num_groups, meta.single_pad, meta.pad_size) == (4, 3, 24)
    assert content.shape == (2, 24, 16) and anchors.shape == (2, 24, 4) and mask.shape == (34, 34)
    boxes = anchors.sigmoid()
    for b, t in enumerate(targets):
        n = len(t["labels"])
        for g in range(meta.num_groups):
            for half, (lo, hi) in enumerate(((0.0, 1.0), (1.0, 2.0))):  # positive, negative
                start = g * 2 * meta.single_pad + half * meta.single_pad
                rows = slice(start, start + n)
                # no label noise: the content is the label's embedding
                torch.testing.assert_close(content[b, rows], label_enc(t["labels"]))
                xyxy = torch.cat([boxes[b, rows, :2] - boxes[b, rows, 2:] / 2, boxes[b, rows, :2] + boxes[b, rows, 2:] / 2], 1)
                gt = torch.cat([t["boxes"][:, :2] - t["boxes"][:, 2:] / 2, t["boxes"][:, :2] + t["boxes"][:, 2:] / 2], 1)
                half_size = torch.cat([t["boxes"][:, 2:], t["boxes"][:, 2:]], 1) / 2
                move = (xyxy - gt).abs() / (half_size * 0.4)
                inside = (gt > 1e-3) & (gt < 1 - 1e-3) & (xyxy > 1e-3) & (xyxy < 1 - 1e-3)  # not clamped
                assert (move[inside] <= hi + 1e-3).all() and (move[inside] >= lo - 1e-3).all()
                assert not content[b, start + n:start + meta.single_pad].any()  # empty slots stay zero
    # positives of every group, matched to their boxes in order
    src, tgt = dn_matching_indices(targets, meta, torch.device("cpu"))[0]
    assert src.tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20] and tgt.tolist() == [0, 1, 2] * 4


def test_label_noise_replaces_about_half_the_ratio():
    torch.manual_seed(0)
    label_enc = torch.nn.Embedding(92, 8)
    targets = [{"labels": torch.full((50,), 7), "boxes": torch.rand(50, 4) * 0.5 + 0.25}]
    content, _, _, meta = prepare_cdn(targets, 100, 0.5, 1.0, 4, 91, 8, label_enc)  # 2 groups of 100
    changed = (content[0] != label_enc.weight[7]).any(-1).float().mean().item()
    assert 0.15 < changed < 0.35  # ratio 0.5 -> a quarter of the labels redrawn (some redrawn as 7)


def test_denoising_does_not_change_the_matching_outputs():
    """The mask hides every denoising query from the matching queries, so their outputs are the
    same with and without denoising (dropout 0, as the release)."""
    torch.manual_seed(0)
    model = create_detector("dino_tiny", num_classes=5).train()
    with torch.no_grad():
        plain = model(_images())
        with_dn = model(_images(), targets=_targets())
    assert plain["dn_meta"] is None and with_dn["dn_meta"].pad_size == 2 * 3 * 4
    torch.testing.assert_close(with_dn["pred_logits"], plain["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(with_dn["pred_boxes"], plain["pred_boxes"], atol=1e-6, rtol=0)
    dn = with_dn["dn_meta"].outputs
    assert dn["pred_logits"].shape == (2, 24, 5) and len(dn["aux_outputs"]) == model.cfg.dec_layers - 1


def test_training_step_with_denoising_has_the_releases_losses():
    torch.manual_seed(0)
    model = create_detector("dino_tiny", num_classes=5).train()
    criterion = model.build_criterion()
    out = model(_images(), targets=_targets())
    losses = criterion(out, _targets())
    for suffix in ("", "_0", "_dn", "_dn_0", "_interm"):
        assert {f"loss_ce{suffix}", f"loss_bbox{suffix}", f"loss_giou{suffix}"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox_dn"] > 0
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    total.backward()
    assert model.label_enc.weight.grad.abs().sum() > 0  # denoising content queries learn
    assert model.transformer.tgt_embed.weight.grad.abs().sum() > 0
    # eval (no denoising): the dn losses are reported as zeros, as the release
    model.eval()
    with torch.no_grad():
        losses = criterion(model(_images()), _targets())
    assert losses["loss_bbox_dn"] == 0 and losses["loss_ce_dn_0"] == 0


def _fixed(size):
    from enact import EnactConfig

    return EnactConfig(cluster_size=size)


@pytest.mark.parametrize("enact", VARIANTS)
def test_fits_one_batch_with_denoising(enact):
    torch.manual_seed(0)
    model = create_detector("dino_tiny", num_classes=5, enact=_fixed(2) if enact else False, lr_backbone=0.0).train()
    criterion = model.build_criterion()
    opt = torch.optim.AdamW(model.param_groups(lr=1e-3))
    images, targets = _images(), _targets()
    history = []
    for _ in range(20):
        out = model(images, targets=targets)
        losses = criterion(out, targets)
        total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.grad_clip_max_norm)
        opt.step()
        history.append(total.item())
    assert sum(history[-3:]) / 3 < 0.7 * history[0], history
    if enact:
        stats = model.enact_stats()
        assert len(stats) == model.cfg.enc_layers and all(s["cluster_size"] == [2] * 4 for s in stats)
        assert model.transformer.encoder.enact_clustering["0"].W_prob.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("enact", [False, ENACT_PARAM])
def test_eval_outputs_postprocess_and_checkpoint_round_trip(enact, tmp_path):
    torch.manual_seed(0)
    model = create_detector("dino_tiny", num_classes=5, enact=enact).eval()
    with torch.no_grad():
        out = model(_images())
    q = model.cfg.num_queries
    assert out["pred_logits"].shape == (2, q, 5) and out["interm_outputs"]["pred_boxes"].shape == (2, q, 4)
    if enact:
        stats = model.enact_stats()
        assert len(stats) == 2 and len(stats[0]["tokens_before"]) == 4  # per level
        assert stats[0]["query_len_before"] == sum(stats[0]["tokens_before"]) >= stats[0]["query_len_after"]
    results = model.postprocess(out, torch.tensor([[64, 80], [56, 64]]))
    assert [len(r["scores"]) for r in results] == [model.cfg.num_select] * 2
    torch.save({"model": model.state_dict()}, tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    fresh = create_detector("dino_tiny", num_classes=5, enact=enact).eval()
    assert load_checkpoint(fresh, tmp_path / "ckpt.pth", strict=True).ok
    with torch.no_grad():
        again = fresh(_images())
    assert torch.equal(again["pred_logits"], out["pred_logits"]) and torch.equal(again["pred_boxes"], out["pred_boxes"])


def test_cluster_size_one_equals_the_baseline():
    torch.manual_seed(0)
    base = create_detector("dino_tiny", num_classes=5).eval()
    clustered = create_detector("dino_tiny", num_classes=5, enact=_fixed(1)).eval()
    report = load_checkpoint(clustered, base.state_dict(), strict=False)
    assert all("enact_clustering" in k for k in report.missing_keys) and not report.unexpected_keys
    with torch.no_grad():
        a, b = base(_images()), clustered(_images())
    torch.testing.assert_close(b["pred_logits"], a["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(b["pred_boxes"], a["pred_boxes"], atol=1e-5, rtol=0)


def test_bad_config_errors_name_the_field():
    with pytest.raises(ValueError, match="dn_number must be an int >= 0"):
        create_detector("dino_tiny", dn_number=-1)
    with pytest.raises(ValueError, match="dn_label_noise_ratio must be in"):
        create_detector("dino_tiny", dn_label_noise_ratio=1.5)


@pytest.mark.parametrize("enact", [False, ENACT_PARAM])
def test_padding_mask_hides_padded_features(enact):
    """Noise at padded positions of every level changes neither the decoder states nor the boxes
    (the value maps are masked, padded proposals are excluded; ENACT with a fixed cluster size 1
    so that no cluster mixes padded and valid tokens)."""
    torch.manual_seed(0)
    model = create_detector("dino_tiny", enact=_fixed(1) if enact else False).eval()
    c = model.transformer.d_model
    shapes, valid = [(8, 10), (4, 5), (2, 3), (1, 2)], [(5, 7), (3, 4), (2, 2), (1, 1)]  # image 1's valid part
    srcs, noisy, masks, pos = [], [], [], []
    for (h, w), (vh, vw) in zip(shapes, valid):
        src, m = torch.randn(2, c, h, w), torch.zeros(2, h, w, dtype=torch.bool)
        m[1, vh:, :] = True
        m[1, :, vw:] = True
        n = src.clone()
        n[m[:, None].expand_as(src)] = torch.randn(int(m.sum()) * c)
        srcs.append(src), noisy.append(n), masks.append(m), pos.append(torch.randn(2, c, h, w))
    with torch.no_grad():
        hs, refs, *_ = model.transformer(srcs, masks, pos)
        hs_noisy, refs_noisy, *_ = model.transformer(noisy, masks, pos)
    torch.testing.assert_close(hs_noisy, hs, atol=1e-5, rtol=0)
    torch.testing.assert_close(refs_noisy, refs, atol=1e-6, rtol=0)


def test_images_without_boxes_train_without_denoising_queries():
    torch.manual_seed(0)
    model = create_detector("dino_tiny", num_classes=5).train()
    criterion = model.build_criterion()
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    out = model(_images(), targets=empty)
    assert out["dn_meta"].pad_size == 0 and out["pred_logits"].shape[1] == model.cfg.num_queries
    losses = criterion(out, empty)
    assert losses["loss_bbox_dn"] == 0 and losses["loss_bbox"] == 0 and losses["loss_ce"] > 0
