"""The detectors' `msda` option: "op" (the registered op, default) and "pytorch" (the autograd
reference path) give the same outputs (1e-5) and gradients (1e-4 relative) on every deformable
variant, with and without ENACT token clustering, in float32 on padded batches of mixed sizes."""
from __future__ import annotations

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.detectors.common import ms_deform_attn_op as op
from enact_bench.detectors.common.ms_deform_attn import MSDeformAttn

from detector_helpers import HAS_ENACT

NAMES = ["deformable_detr_tiny", "deformable_detr_tiny_box_refine", "deformable_detr_tiny_two_stage", "dino_tiny"]
ENACT = [pytest.param(False, id="base"),
         pytest.param(True, id="enact", marks=pytest.mark.skipif(not HAS_ENACT, reason="enact plug-in not present"))]


def _images():
    g = torch.Generator().manual_seed(0)
    # three sizes: the batch is padded to 96x112, so every level has padded rows or columns
    return [torch.randn(3, 96, 80, generator=g), torch.randn(3, 72, 112, generator=g),
            torch.randn(3, 64, 64, generator=g)]


def _targets():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
            {"labels": torch.tensor([4, 0]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.3], [0.6, 0.3, 0.2, 0.2]])}]


def _run(name, msda, enact):
    from enact import EnactConfig

    torch.manual_seed(0)
    model = create_detector(name, num_classes=5, msda=msda, dropout=0.0,
                            enact=EnactConfig(cluster_size=2) if enact else False).train()
    # The release's initialisation (offset weights zero, bias whole cells) puts every sampling
    # point on a pixel centre, where bilinear sampling has a kink; ENACT's pooled reference points
    # depend on the features, so a 1e-7 rounding difference between the two paths would pick the
    # other one-sided derivative there. Random offset weights move the points off the kinks.
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MSDeformAttn):
                m.sampling_offsets.weight.normal_(0.0, 0.05, generator=g)
    criterion = model.build_criterion()
    torch.manual_seed(1)  # DINO's denoising noise: the same draws for both
    out = model(_images(), targets=_targets())
    losses = criterion(out, _targets())
    loss = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return model, out, loss.detach(), grads


@pytest.mark.parametrize("enact", ENACT)
@pytest.mark.parametrize("name", NAMES)
def test_op_and_pytorch_paths_agree(name, enact):
    op.reset_msda_impls()
    m_op, out_op, loss_op, g_op = _run(name, "op", enact)
    assert op.msda_impls_seen() == ["pytorch_op"]
    op.reset_msda_impls()
    m_pt, out_pt, loss_pt, g_pt = _run(name, "pytorch", enact)
    assert op.msda_impls_seen() == ["pytorch_reference"]
    assert m_op.attention == "ms_deform_attn_op" and m_pt.attention == "ms_deform_attn_pytorch"
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(out_op[key], out_pt[key], rtol=1e-5, atol=1e-5)
    for a, b in zip(out_op["aux_outputs"], out_pt["aux_outputs"]):
        torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss_op, loss_pt, rtol=1e-5, atol=1e-5)
    assert g_op.keys() == g_pt.keys()
    # every sampling-offset and attention-weight projection learns through the deformable core
    assert any("sampling_offsets" in n for n in g_op)
    for n in g_op:
        scale = g_pt[n].abs().max().clamp_min(1e-6)
        err = (g_op[n] - g_pt[n]).abs().max() / scale
        assert err <= 1e-4, (n, float(err))


@pytest.mark.parametrize("name", ["deformable_detr_tiny", "dino_tiny"])
def test_the_option_reaches_every_deformable_layer_and_no_state(name):
    base = create_detector(name)
    ref = create_detector(name, msda="pytorch", enact=HAS_ENACT)
    layers = [m for m in ref.modules() if isinstance(m, MSDeformAttn)]
    assert len(layers) == base.cfg.enc_layers + base.cfg.dec_layers
    assert {m.msda for m in layers} == {"pytorch"}
    assert {m.msda for m in base.modules() if isinstance(m, MSDeformAttn)} == {"op"}  # the default
    # a plain attribute: the state_dict (and so checkpoints) are the same for both
    assert [k for k in ref.state_dict() if "enact" not in k] == list(base.state_dict())


def test_bad_msda_names_the_field_and_choices():
    with pytest.raises(ValueError, match=r"msda must be one of \('op', 'pytorch'\)"):
        create_detector("deformable_detr_tiny", msda="cuda")
    with pytest.raises(ValueError, match="msda must be one of"):
        create_detector("dino_tiny", msda="")
