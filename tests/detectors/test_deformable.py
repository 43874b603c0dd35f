"""Deformable DETR: multi-scale deformable attention against a direct computation, the model's
layout and parameter counts against the release's figures, and tiny end-to-end checks."""
from __future__ import annotations

import pytest
import torch

from enact_bench.detectors import create_detector, load_checkpoint
from enact_bench.detectors.common.ms_deform_attn import MSDeformAttn, ms_deform_attn_core

from detector_helpers import msda_direct


# --- multi-scale deformable attention ------------------------------------------------------------
def test_core_matches_direct_bilinear_sampling_mixed_level_sizes():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 7), (3, 2), (1, 1)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(2, s, 2, 3, generator=g, dtype=torch.float64)
    # locations partly outside [0, 1] to exercise the zero padding
    locations = torch.rand(2, 4, 2, 3, 2, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(2, 4, 2, 3, 2, generator=g, dtype=torch.float64)
    got = ms_deform_attn_core(value, shapes, locations, weights)
    want, _ = msda_direct(value, shapes, locations, weights)
    assert got.shape == (2, 4, 6)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # tensor spatial shapes (the original's form) give the same
    torch.testing.assert_close(ms_deform_attn_core(value, torch.tensor(shapes), locations, weights), got)


def test_core_gradients_are_correct():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 3, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    w = torch.rand(1, 3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn_core(v, shapes, l, a), (value, loc, w))


def test_module_init_and_zero_offsets_sample_the_reference_point():
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    # the release's init: ring of offsets, head h at angle 2 pi h / 4, point i at distance i + 1
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(bias[1, 0, 2], torch.tensor([0.0, 3.0]), atol=1e-6)  # head 1: straight down, 3rd point
    assert torch.equal(bias[0, 1, 0], torch.tensor([1.0, 0.0]))
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    # with zero offsets every point samples at the reference point: a pixel centre -> that pixel
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    shapes = [(4, 5), (2, 3)]
    x = torch.randn(1, 26, 16)
    ref = torch.tensor([[[[(2 + 0.5) / 5, (1 + 0.5) / 4], [(0 + 0.5) / 3, (1 + 0.5) / 2]]]])  # (1, 1, 2, 2)
    out = attn(torch.randn(1, 1, 16), ref, x, shapes)
    value = attn.value_proj(x)
    expected = attn.output_proj((value[0, 1 * 5 + 2] + value[0, 20 + 1 * 3 + 0]) / 2)  # equal weights
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-5, atol=1e-5)


def test_module_masks_padding_and_takes_box_references():
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    x = torch.randn(1, 4, 8)
    mask = torch.tensor([[False, True, False, False]])  # (2 x 2 map) pixel (0, 1) is padding
    ref_on_pad = torch.tensor([[[[0.75, 0.25]]]])
    out = attn(torch.randn(1, 1, 8), ref_on_pad, x, [(2, 2)], None, mask)
    torch.testing.assert_close(out[0, 0], attn.output_proj.bias)  # samples only zeroed padding
    boxes = torch.tensor([[[[0.25, 0.25, 0.5, 0.5]]]])  # (cx, cy, w, h): zero offsets -> the centre
    assert torch.allclose(attn(torch.randn(1, 1, 8), boxes, x, [(2, 2)]),
                          attn(torch.randn(1, 1, 8), boxes[..., :2], x, [(2, 2)]), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_module_on_cuda_matches_cpu(dtype):
    torch.manual_seed(0)
    attn = MSDeformAttn(32, 3, 4, 4)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.05)
    shapes = [(8, 10), (4, 5), (2, 3)]
    q, x = torch.randn(2, 7, 32), torch.randn(2, 106, 32)
    ref = torch.rand(2, 7, 3, 2)
    want = attn(q, ref, x, shapes)
    got = attn.cuda().to(dtype)(q.cuda().to(dtype), ref.cuda().to(dtype), x.cuda().to(dtype), shapes).float().cpu()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


# --- the model: layout and parameter counts of the release ---------------------------------------
RELEASE_PARAMS = {  # sum of p.numel() over model.parameters() of the release, built with its defaults
    "deformable_detr_r50": 40_069_665,
    "deformable_detr_r50_box_refine": 40_849_660,
    "deformable_detr_r50_two_stage": 41_181_529,
}


@pytest.mark.parametrize("name", sorted(RELEASE_PARAMS))
def test_release_parameter_counts_and_aliased_keys(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_detector(name)
    assert sum(p.numel() for p in model.parameters()) == RELEASE_PARAMS[name]
    keys = model.state_dict(keep_vars=True)
    refine = name != "deformable_detr_r50"
    assert ("transformer.decoder.bbox_embed.0.layers.0.weight" in keys) == refine
    assert ("transformer.decoder.class_embed.6.weight" in keys) == name.endswith("two_stage")
    assert ("query_embed.weight" in keys) != name.endswith("two_stage")
    assert ("transformer.reference_points.weight" in keys) != name.endswith("two_stage")
    if not refine:  # one head shared by the 6 decoder layers, listed 6 times as in the release
        assert keys["class_embed.0.weight"] is keys["class_embed.5.weight"]
    assert keys["input_proj.3.0.weight"].shape == (256, 2048, 3, 3)  # extra level from C5
    assert keys["transformer.encoder.layers.5.self_attn.sampling_offsets.weight"].shape == (256, 256)


def test_enact_adds_only_w_prob_keys():
    with torch.device("meta"):
        base = create_detector("deformable_detr_r50")
        enact = create_detector("deformable_detr_r50", enact=True)
    extra = set(enact.state_dict()) - set(base.state_dict())
    assert extra == {f"transformer.encoder.enact_clustering.{i}.W_prob.{k}" for i in range(6) for k in ("weight", "bias")}
    assert set(base.state_dict()) <= set(enact.state_dict())


def test_param_groups_follow_the_release():
    model = create_detector("deformable_detr_tiny")
    rest, backbone, proj = model.param_groups()
    assert (rest["lr"], backbone["lr"], proj["lr"]) == (2e-4, 2e-5, pytest.approx(2e-5))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("backbone.0" in names[id(p)] for p in backbone["params"])
    assert {names[id(p)].split(".")[-2] for p in proj["params"]} == {"sampling_offsets", "reference_points"}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in (rest, backbone, proj) for p in g["params"]) == trainable


# --- tiny end-to-end -------------------------------------------------------------------------------
VARIANTS = ["deformable_detr_tiny", "deformable_detr_tiny_box_refine", "deformable_detr_tiny_two_stage"]


def _targets():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


@pytest.mark.parametrize("name", VARIANTS)
def test_mixed_sizes_outputs_and_postprocess(name):
    torch.manual_seed(0)
    model = create_detector(name, num_classes=5).eval()
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 72)]
    with torch.no_grad():
        out = model(images)
    q = model.cfg.num_queries
    assert out["pred_logits"].shape == (2, q, 5) and out["pred_boxes"].shape == (2, q, 4)
    assert len(out["aux_outputs"]) == model.cfg.dec_layers - 1
    assert ("enc_outputs" in out) == name.endswith("two_stage")
    assert torch.isfinite(out["pred_logits"]).all() and ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    results = model.postprocess(out, torch.tensor([[64, 96], [80, 72]]))
    assert [len(r["scores"]) for r in results] == [min(100, q * 5)] * 2
    # the best detection: its query's box in xyxy pixels of image 1 (h 80, w 72), its score the sigmoid
    best = out["pred_logits"][1].sigmoid().flatten().argmax()
    cx, cy, w, h = out["pred_boxes"][1, best // 5].tolist()
    expected = torch.tensor([(cx - w / 2) * 72, (cy - h / 2) * 80, (cx + w / 2) * 72, (cy + h / 2) * 80])
    torch.testing.assert_close(results[1]["boxes"][0], expected, rtol=1e-5, atol=1e-4)
    assert results[1]["labels"][0] == best % 5
    # the same image alone (no padding) and padded in a batch: its top-left valid region decides
    with torch.no_grad():
        alone = model([images[0]])
    assert alone["pred_logits"].shape == (1, q, 5)


@pytest.mark.parametrize("enact", [False, True], ids=["base", "enact"])
def test_fits_one_batch(enact):
    torch.manual_seed(0)
    # frozen backbone (lr_backbone=0, as the release's option) keeps this fast
    model = create_detector("deformable_detr_tiny_two_stage", num_classes=4, enact=_fixed(2) if enact else False,
                            dropout=0.0, lr_backbone=0.0)
    criterion = model.build_criterion()
    opt = torch.optim.AdamW(model.param_groups(lr=1e-3), weight_decay=1e-4)
    images = [torch.randn(3, 64, 80), torch.randn(3, 56, 64)]
    targets = _targets()
    losses = []
    for _ in range(10):
        out = model(images)
        loss_dict = criterion(out, targets)
        loss = sum(loss_dict[k] * criterion.weight_dict[k] for k in loss_dict if k in criterion.weight_dict)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.grad_clip_max_norm)
        opt.step()
        losses.append(loss.item())
    assert {"loss_ce_enc", "loss_bbox_0", "loss_giou"} <= set(loss_dict)
    assert losses[-1] < 0.65 * losses[0], losses
    if enact:
        w_prob = model.transformer.encoder.enact_clustering["0"].W_prob.weight
        assert w_prob.grad is not None and w_prob.grad.abs().sum() > 0


def _fixed(size):
    from enact import EnactConfig

    return EnactConfig(cluster_size=size)


@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = create_detector(name, num_classes=5).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict()}, path)
    torch.manual_seed(1)
    fresh = create_detector(name, num_classes=5).eval()
    report = load_checkpoint(fresh, path, strict=True)
    assert report.ok
    images = [torch.randn(3, 64, 64)]
    with torch.no_grad():
        a, b = model(images), fresh(images)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=0, atol=0)


def test_checkpoint_of_another_variant_is_refused():
    from enact_bench.detectors import CheckpointMismatchError

    single = create_detector("deformable_detr_tiny")
    two_stage = create_detector("deformable_detr_tiny_two_stage")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_checkpoint(two_stage, single.state_dict(), strict=True)


def test_bad_config_errors_name_the_field():
    with pytest.raises(ValueError, match="two_stage=True needs with_box_refine=True"):
        create_detector("deformable_detr_tiny", two_stage=True)
    with pytest.raises(ValueError, match="hidden_dim must be a multiple of 32"):
        create_detector("deformable_detr_tiny", hidden_dim=48, nheads=4)
