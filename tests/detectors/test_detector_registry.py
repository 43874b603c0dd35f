"""Registry: names, overrides, errors that list the valid choices, parameter counts, backbone."""
import pytest
import torch
import torchvision

from enact_bench.detectors import create_detector, get_spec, list_detectors

from detector_helpers import TINY

ORIGINAL_PARAMS = {  # counted on models built by facebookresearch/detr and the ENACT release
    ("detr_r50", False): 41_524_768,
    ("detr_r50", True): 41_526_310,
    ("detr_r50_dc5", False): 41_524_768,
    ("detr_r101", False): 60_464_672,
}


def test_registry_lists_the_detr_family_and_tiny_configs():
    names = list_detectors()
    assert {"detr_r50", "detr_r50_dc5", "detr_r101", "detr_tiny"} <= set(names)
    assert "detr_tiny" in TINY and "detr_r50" not in TINY
    assert set(list_detectors(family="detr")) >= {"detr_r50", "detr_tiny"}
    assert get_spec("detr_r50").family == "detr"


@pytest.mark.parametrize("key", sorted(ORIGINAL_PARAMS, key=str))
def test_parameter_counts_match_the_originals(key):
    name, enact = key
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_detector(name, enact=enact)
    assert sum(p.numel() for p in model.parameters()) == ORIGINAL_PARAMS[key]


def test_frozen_stem_and_layer1_and_param_groups():
    with torch.device("meta"):
        model = create_detector("detr_r50")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.0.body.conv1", "backbone.0.body.layer1")) for n in frozen)
    assert "backbone.0.body.conv1.weight" in frozen
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == 41_302_368  # the original's
    groups = model.param_groups()
    assert [g["lr"] for g in groups] == [1e-4, 1e-5] and all(g["weight_decay"] == 1e-4 for g in groups)
    assert model.default_optimizer_kwargs == {"lr": 1e-4, "weight_decay": 1e-4}
    n_groups = sum(p.numel() for g in groups for p in g["params"])
    assert n_groups == 41_302_368
    assert all(p.requires_grad for g in groups for p in g["params"])
    assert len(groups[1]["params"]) == sum(1 for n, p in model.named_parameters() if "backbone" in n and p.requires_grad)


def test_dc5_has_stride_16():
    with torch.device("meta"):
        assert create_detector("detr_r50_dc5").backbone.strides == [16]
        assert create_detector("detr_r50").backbone.strides == [32]


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(KeyError, match="unknown detector 'detr_r5'.*detr_r50.*detr_tiny"):
        create_detector("detr_r5")


def test_unknown_override_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown override\(s\) \['hiden_dim'\].*valid overrides:.*hidden_dim"):
        create_detector("detr_tiny", hiden_dim=32)


@pytest.mark.parametrize("override, message", [
    ({"attention": "flash"}, "attention must be one of"),
    ({"backbone": "vgg16"}, "backbone must be one of"),
    ({"hidden_dim": 60, "nheads": 8}, "divisible by nheads"),
    ({"enact_layers": (5,)}, "enact_layers must be"),
])
def test_bad_override_values_say_what_is_expected(override, message):
    with pytest.raises(ValueError, match=message):
        create_detector("detr_tiny", **override)


def test_bad_enact_and_num_classes_arguments():
    with pytest.raises(TypeError, match="enact must be False, True"):
        create_detector("detr_tiny", enact="yes")
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        create_detector("detr_tiny", num_classes=0)


def test_pretrained_backbone_needs_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="backbone_weights='/path/to/resnet18"):
        create_detector("detr_tiny", pretrained_backbone=True)
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        create_detector("detr_tiny", pretrained_backbone=True, backbone_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="only read with pretrained_backbone=True"):
        create_detector("detr_tiny", backbone_weights=str(tmp_path / "nope.pth"))


def test_pretrained_backbone_loads_a_torchvision_file(tmp_path):
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        resnet.bn1.running_mean.uniform_()  # something FrozenBatchNorm must receive too
    path = tmp_path / "resnet18-test.pth"
    torch.save(resnet.state_dict(), path)
    model = create_detector("detr_tiny", pretrained_backbone=True, backbone_weights=str(path))
    body = model.backbone[0].body
    assert torch.equal(body.conv1.weight, resnet.conv1.weight)
    assert torch.equal(body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(body.bn1.running_mean, resnet.bn1.running_mean)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit a torchvision ResNet"):
        create_detector("detr_tiny", pretrained_backbone=True, backbone_weights=str(tmp_path / "bad.pth"))
