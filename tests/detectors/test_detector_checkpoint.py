"""load_checkpoint: round trips through {"model": ...} files and bare state_dicts; clear mismatches."""
import pytest
import torch

from enact_bench.detectors import CheckpointMismatchError, create_detector, load_checkpoint

from detector_helpers import ENACT_PARAM, TINY, images


@pytest.mark.parametrize("enact", [False, ENACT_PARAM])
@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip(name, enact, tmp_path):
    torch.manual_seed(0)
    src = create_detector(name, enact=enact).eval()
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    dst = create_detector(name, enact=enact).eval()
    imgs = images(sizes=[(64, 64), (48, 80)])
    with torch.no_grad():
        before = dst(imgs)["pred_logits"]
        report = load_checkpoint(dst, tmp_path / "ckpt.pth")
        after, expected = dst(imgs)["pred_logits"], src(imgs)["pred_logits"]
    assert report.ok
    assert not torch.equal(before, expected)  # the two random inits differ, so loading did something
    assert torch.equal(after, expected)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    load_checkpoint(dst, src.state_dict())  # a bare state_dict is accepted too
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())


@pytest.mark.parametrize("name", TINY)
def test_mismatch_lists_missing_unexpected_and_shapes(name):
    model = create_detector(name, num_classes=5)
    state = model.state_dict()
    # a key every variant has: the query embedding (DETR, Conditional DETR, one-stage Deformable),
    # the level embedding (two-stage Deformable DETR), the pattern embedding (Anchor DETR)
    candidates = ("query_embed.weight", "transformer.level_embed", "transformer.pattern.weight")
    moved = next(k for k in candidates if k in state)
    state = {("renamed." + k if k == moved else k): v for k, v in state.items()}
    head = next(k for k in state if "class_embed" in k and k.endswith("weight"))
    state[head] = torch.zeros(3, state[head].shape[1])
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(model, {"model": state})
    msg = str(err.value)
    assert "1 missing keys" in msg and moved in msg
    assert "1 unexpected keys" in msg and f"renamed.{moved}" in msg
    assert "shape mismatches" in msg and f"{head} checkpoint (3, " in msg
    report = load_checkpoint(model, state, strict=False)
    assert report.missing_keys == [moved] and report.unexpected_keys == [f"renamed.{moved}"]
    assert [k for k, _, _ in report.shape_mismatches] == [head]


def test_baseline_checkpoint_into_enact_model_names_the_attention_keys():
    base = create_detector("detr_tiny")
    enact = create_detector("detr_tiny", enact=True)
    with pytest.raises(CheckpointMismatchError, match=r"self_attn\.W_prob\.weight[\s\S]*self_attn\.in_proj_weight"):
        load_checkpoint(enact, base.state_dict())


def test_not_a_checkpoint():
    model = create_detector("detr_tiny")
    with pytest.raises(TypeError, match="not a state_dict"):
        load_checkpoint(model, {"model": {"a": 1}})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(model, "/nonexistent/ckpt.pth")
