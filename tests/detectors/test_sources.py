"""Model sources: hf:MODEL_TYPE, hf:PATH, py:MODULE:FACTORY and FILE.py:FACTORY (detectors/sources.py)."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from enact_bench.detectors import ModelSpec, create_detector, get_spec
from enact_bench.detectors.foreign import ForeignDetector, ModelOutputError
from enact_bench.detectors.sources import SourceName, parse_source
from enact_bench.errors import UserInputError
from enact_bench.data.batch import make_batch
from enact_bench.train.step import loss_of


def test_names_parse_to_their_source_and_registered_names_to_none():
    assert parse_source("detr_r50") is None
    assert parse_source("hf:detr") == SourceName("hf_type", "hf:detr", "detr")
    assert parse_source("hf:./saved") == SourceName("hf_path", "hf:./saved", "./saved")
    assert parse_source("hf:/x/config.json").kind == "hf_path"
    assert parse_source("py:pkg.models:build") == SourceName("module", "py:pkg.models:build", "pkg.models", "build")
    assert parse_source("models/my.py:build") == SourceName("file", "models/my.py:build", "models/my.py", "build")
    for bad in ("hf:", "py:pkg", "py:pkg:", "py:pkg.mod:1x", "my.py:"):
        with pytest.raises(UserInputError):
            parse_source(bad)


def test_hf_type_builds_from_config_defaults_with_two_labels_and_no_backbone_weights():
    model = create_detector("hf:detr", tiny=True)
    assert isinstance(model, ForeignDetector)
    assert (model.name, model.family, model.attention, model.num_classes) == ("hf:detr", "hf:detr", "sdpa", 2)
    cfg = model.model.config
    assert cfg.num_labels == 2 and cfg.d_model == 32 and cfg.backbone_config.use_pretrained_backbone is False
    assert model.model.class_labels_classifier.out_features == 3  # 2 labels + "no object"
    # num_classes (a case's) becomes num_labels; a config field is overridden by name
    model = create_detector("hf:detr", tiny=True, num_classes=5, **{"config.num_queries": 7})
    assert model.model.config.num_labels == 5 and model.model.config.num_queries == 7
    assert model.model.model.query_position_embeddings.weight.shape[0] == 7
    assert get_spec("hf:detr").family == "hf:detr"


def test_hf_bad_names_and_fields_are_one_line_errors():
    cases = {"hf:no_such_model": "unknown model type; transformers .* builds these object detectors: .*detr",
             "hf:grounding_dino": "needs text inputs",
             "hf:omdet-turbo": "needs text inputs"}
    for name, match in cases.items():
        with pytest.raises(UserInputError, match=match) as e:
            create_detector(name)
        assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match="config.no_field: DetrConfig has no field 'no_field'"):
        create_detector("hf:detr", **{"config.no_field": 1})
    with pytest.raises(UserInputError, match="config.backbone_config.nope: TimmBackboneConfig has no field"):
        create_detector("hf:detr", **{"config.backbone_config.nope": 1})
    with pytest.raises(UserInputError, match="no SDPA attention for table-transformer"):
        create_detector("hf:table-transformer", tiny=True, attn_implementation="sdpa")
    with pytest.raises(UserInputError, match="unknown override 'bogus'"):
        create_detector("hf:detr", bogus=1)


def test_a_config_that_cannot_train_says_what_to_set_and_the_setting_trains():
    """LW-DETR's transformers defaults have no projector level (its forward fails in torch.cat):
    one line naming the field; with the field set, a real step of the tiny model runs."""
    with pytest.raises(UserInputError, match=r"hf:lw_detr: its config has no projector level .*"
                                             r"config\.projector_scale_factors=\[1\.0\]") as e:
        create_detector("hf:lw_detr")
    assert "\n" not in str(e.value)
    assert torch.isfinite(_one_step(create_detector("hf:lw_detr", tiny=True)))


def test_hf_path_reads_a_saved_config_and_a_folder_without_one_is_an_error(tmp_path):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("detr", num_queries=9, d_model=32, encoder_layers=1, decoder_layers=2,
                               encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=2,
                               decoder_attention_heads=2, backbone_config={"model_type": "timm_backbone",
                                                                           "backbone": "test_resnet",
                                                                           "use_pretrained_backbone": True})
    cfg.save_pretrained(tmp_path / "saved")
    for name in (f"hf:{tmp_path / 'saved'}", f"hf:{tmp_path / 'saved' / 'config.json'}"):
        model = create_detector(name)
        assert model.family == "hf:detr" and model.model.config.num_queries == 9
        assert model.model.config.backbone_config.use_pretrained_backbone is False  # never downloads weights
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="no config found"):
        create_detector(f"hf:{tmp_path / 'empty'}")


def test_without_transformers_hf_names_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(UserInputError, match=r"pip install 'enact-bench\[hf\]'"):
        create_detector("hf:detr")


class _Tiny(nn.Module):
    """A model in HF's convention: forward(pixel_values, pixel_mask=None, labels=None) -> .loss."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 3, stride=4)
        self.head = nn.Linear(width, 4)

    def forward(self, pixel_values, pixel_mask=None, labels=None):
        feat = self.backbone(pixel_values).mean((2, 3))  # (B, width)
        boxes = self.head(feat).sigmoid()[:, None, :]  # (B, 1, 4)
        out = {"logits": feat[:, None, :3], "pred_boxes": boxes}
        if labels is not None:
            out["loss"] = sum((boxes[i, 0] - t["boxes"][0]).abs().sum() for i, t in enumerate(labels))
        return out


FACTORY_FILE = """
import torch
from torch import nn
from enact_bench.detectors import ModelSpec
from test_sources_model import Tiny

def build(width=8):
    return Tiny(width)

def build_spec():
    model = Tiny(4)
    def loss_fn(out, targets):
        return out["pred_boxes"].sum()
    def make_batch(pixel_values, pixel_mask, targets):
        return {"pixel_values": pixel_values}
    return ModelSpec(model=model, loss_fn=loss_fn, make_batch=make_batch, lr=2e-4, clip_max_norm=None)

def raises():
    raise RuntimeError("no GPU here\\nsecond line")

def not_a_module():
    return 3

class NoLoss(nn.Conv2d):
    def forward(self, pixel_values, pixel_mask=None, labels=None):
        return {"logits": super().forward(pixel_values)}

def no_loss():
    return NoLoss(3, 3, 1)

def other_convention():
    return nn.Conv2d(3, 3, 1)
"""


@pytest.fixture
def factory_file(tmp_path, monkeypatch):
    (tmp_path / "test_sources_model.py").write_text(
        "from torch import nn\n" + textwrap.dedent(__import__("inspect").getsource(_Tiny)).replace("_Tiny", "Tiny"))
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))  # for py:my_models:build
    return path


def _one_step(model):
    batch = make_batch(2, (32, 48), num_targets=2, num_classes=model.num_classes)
    model.train()
    loss = loss_of(model.build_criterion(), model(batch.images, batch.mask, targets=batch.targets), batch.targets)
    loss.backward()
    return loss


def test_factories_from_a_file_and_a_module_build_and_train(factory_file):
    for name in (f"{factory_file}:build", "py:my_models:build"):
        model = create_detector(name, width=6)
        assert model.family == "factory" and model.model.backbone.out_channels == 6
        assert _one_step(model).dim() == 0 and model.model.head.weight.grad is not None
    spec_model = create_detector(f"{factory_file}:build_spec")
    assert spec_model.default_optimizer_kwargs["lr"] == 2e-4 and spec_model.grad_clip_max_norm is None
    assert _one_step(spec_model).item() > 0


def test_factory_failures_are_one_line_errors(factory_file):
    cases = {f"{factory_file}:raises": "the factory raised RuntimeError: no GPU here$",
             f"{factory_file}:not_a_module": "returned a int; expected an nn.Module",
             f"{factory_file}:missing": "has no 'missing'",
             f"{factory_file.parent / 'nope.py'}:build": "file not found",
             "py:no_such_pkg.models:build": "cannot import module 'no_such_pkg.models'",
             f"{factory_file}:other_convention": "Conv2d.forward takes no pixel_values"}
    for name, match in cases.items():
        with pytest.raises(UserInputError, match=match) as e:
            create_detector(name)
        assert "\n" not in str(e.value)
    with pytest.raises(UserInputError, match="the factory takes no 'depth'; its parameters: width"):
        create_detector(f"{factory_file}:build", depth=3)
    with pytest.raises(ModelOutputError, match="the output has no loss"):
        _one_step(create_detector(f"{factory_file}:no_loss"))


def test_model_spec_validates_its_fields():
    with pytest.raises(TypeError, match="ModelSpec.model must be an nn.Module"):
        ModelSpec(model=3)
    with pytest.raises(TypeError, match="ModelSpec.loss_fn must be callable"):
        ModelSpec(model=nn.Linear(1, 1), loss_fn=3)
    with pytest.raises(ValueError, match="size_multiple must be an int >= 1"):
        ModelSpec(model=nn.Linear(1, 1), size_multiple=0)


def test_hf_training_step_through_the_adapter_gives_gradients_and_postprocess_boxes():
    torch.manual_seed(0)
    model = create_detector("hf:detr", tiny=True)
    loss = _one_step(model)
    assert torch.isfinite(loss)
    named = dict(model.named_parameters())
    assert named["model.class_labels_classifier.weight"].grad is not None
    model.eval()
    images = [torch.randn(3, 40, 56), torch.randn(3, 32, 48)]  # two sizes: padded, with a mask
    with torch.no_grad():
        out = model.postprocess(model(images), torch.tensor([[400, 560], [320, 480]]))
    assert [o["boxes"].shape for o in out] == [torch.Size([10, 4])] * 2
    assert all((o["labels"] < 2).all() for o in out)  # the "no object" column is not a label


def test_hf_detr_quirk_is_planned_as_it_is_its_resnet_path_freezes_the_whole_backbone():
    """docs/own-model.md names it: HF DETR's own ResNet backbone trains nothing, the timm path all."""
    resnet = {"model_type": "resnet", "depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128],
              "embedding_size": 16, "out_features": ["stage4"]}
    hf_resnet = create_detector("hf:detr", tiny=True, **{"config.backbone_config": resnet})
    timm = create_detector("hf:detr", tiny=True)
    for model, trainable in ((hf_resnet, False), (timm, True)):
        flags = {p.requires_grad for n, p in model.named_parameters() if ".backbone." in n}
        assert flags == {trainable}
    assert any("freezes every backbone parameter" in n for n in timm.notes)
