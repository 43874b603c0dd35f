"""Forward contract of every tiny detector: shapes, masks, list vs padded-batch inputs."""
import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.detectors.base import Detector
from enact_bench.detectors.common.nested import batch_images, downsample_mask, image_sizes, pad_image_list

from detector_helpers import TINY_DETR, ENACT_PARAM, SIZES, TINY, VARIANTS, images


def test_pad_image_list_masks_exactly_the_padding():
    imgs = images()
    batch, mask = pad_image_list(imgs)
    h_max, w_max = max(h for h, _ in SIZES), max(w for _, w in SIZES)
    assert batch.shape == (3, 3, h_max, w_max) and mask.shape == (3, h_max, w_max)
    for img, padded, m, (h, w) in zip(imgs, batch, mask, SIZES):
        assert torch.equal(padded[:, :h, :w], img)
        assert not m[:h, :w].any() and int(m.sum()) == h_max * w_max - h * w
        assert padded[:, h:, :].abs().sum() == 0 and padded[:, :, w:].abs().sum() == 0
    assert image_sizes(mask).tolist() == [list(s) for s in SIZES]


def test_batch_images_validates_inputs():
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        batch_images(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="padded batch"):
        batch_images(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="image 1: expected a \\(C, H, W\\) tensor"):
        batch_images([torch.zeros(3, 8, 8), torch.zeros(8, 8)])
    batch, mask = batch_images(torch.zeros(2, 3, 8, 8))
    assert mask.shape == (2, 8, 8) and not mask.any()


def test_downsample_mask_is_nearest():
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[0, 32:, :] = True  # bottom half padded
    mask[0, :, 64:] = True  # right third padded
    small = downsample_mask(mask, (2, 3))
    assert small.tolist() == [[[False, False, True], [True, True, True]]]


@pytest.mark.parametrize("enact", VARIANTS)
@pytest.mark.parametrize("name", TINY)
def test_output_shapes_and_padded_input(name, enact):
    torch.manual_seed(0)
    model = create_detector(name, enact=enact, num_classes=7).eval()
    assert isinstance(model, Detector) and model.name == name and model.family
    assert (model.enact_config is not None) == enact
    imgs = images()
    with torch.no_grad():
        out = model(imgs)
        batch, mask = pad_image_list(imgs)
        out_padded = model(batch, mask)
    q = out["pred_logits"].shape[1]
    assert out["pred_logits"].shape[0] == 3 and out["pred_logits"].shape[2] in (7, 8)
    assert out["pred_boxes"].shape == (3, q, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    for aux in out.get("aux_outputs", []):
        assert aux["pred_logits"].shape == out["pred_logits"].shape and aux["pred_boxes"].shape == (3, q, 4)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(out[key], out_padded[key])
    stats = model.enact_stats()
    assert (len(stats) > 0) == enact
    for s in stats:
        assert {"cluster_size", "key_len_before", "key_len_after"} <= set(s)


@pytest.mark.parametrize("variant", ["base", pytest.param("enact", marks=ENACT_PARAM.marks),
                                     pytest.param("enact_masked", marks=ENACT_PARAM.marks)])
@pytest.mark.parametrize("name", TINY_DETR)
def test_padding_mask_hides_padded_features(name, variant):
    """Transformer outputs ignore features at padded positions: baseline, and ENACT with
    mask_padding. The ENACT release's encoder does not use the mask, so with the reference preset
    they change (its documented behaviour)."""
    if variant == "base":
        enact = False
    else:
        from enact import EnactConfig

        enact = EnactConfig.reference() if variant == "enact" else EnactConfig(mask_padding=True)
    torch.manual_seed(0)
    model = create_detector(name, enact=enact).eval()
    if not hasattr(model, "transformer") or not hasattr(model.transformer, "d_model"):
        pytest.skip("check written for transformers with a (src, mask, query, pos) interface")
    c = model.transformer.d_model
    src, pos = torch.randn(2, c, 6, 7), torch.randn(2, c, 6, 7)
    mask = torch.zeros(2, 6, 7, dtype=torch.bool)
    mask[1, 4:, :] = True
    mask[1, :, 5:] = True
    noisy = src.clone()
    noisy[mask[:, None].expand_as(src)] = torch.randn(int(mask.sum()) * c)
    query = model.query_embed.weight
    with torch.no_grad():
        hs, _ = model.transformer(src, mask, query, pos)
        hs_noisy, _ = model.transformer(noisy, mask, query, pos)
    if variant == "enact":
        assert not torch.allclose(hs[:, 1], hs_noisy[:, 1], atol=1e-4)
    else:
        torch.testing.assert_close(hs, hs_noisy, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TINY_DETR)
def test_postprocess_absolute_xyxy(name):
    model = create_detector(name)
    q = 5
    logits = torch.zeros(2, q, model.num_classes + 1)
    logits[:, :, 3] = 5.0  # class 3 wins everywhere
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.4]).expand(2, q, 4)
    res = model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200], [50, 60]]))
    assert len(res) == 2
    assert res[0]["labels"].tolist() == [3] * q
    p = torch.softmax(logits[0, 0], -1)[3]
    assert torch.allclose(res[0]["scores"], p.expand(q))
    assert torch.allclose(res[0]["boxes"][0], torch.tensor([80.0, 30.0, 120.0, 70.0]))  # w=200, h=100
    assert torch.allclose(res[1]["boxes"][0], torch.tensor([24.0, 15.0, 36.0, 35.0]))  # w=60, h=50
    with pytest.raises(ValueError, match="target_sizes must be a \\(B, 2\\)"):
        model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([100, 200]))


@pytest.mark.gpu
@pytest.mark.parametrize("enact", VARIANTS)
@pytest.mark.parametrize("name", TINY)
def test_cuda_forward_matches_cpu(name, enact):
    torch.manual_seed(0)
    model = create_detector(name, enact=enact).eval()
    imgs = images()
    with torch.no_grad():
        cpu = model(imgs)
        model.cuda()
        gpu = model([img.cuda() for img in imgs])
    assert gpu["pred_boxes"].device.type == "cuda"
    # TF32 may be on for convolutions: compare loosely
    torch.testing.assert_close(gpu["pred_boxes"].cpu(), cpu["pred_boxes"], atol=1e-2, rtol=0)
