"""The COCO inference path on a real detector: coordinates, and a real learning signal."""
import pytest
import torch

from enact_bench.data.coco import CocoDetection, make_loader
from enact_bench.data.toy_coco import make_toy_coco
from enact_bench.detectors import create_detector
from enact_bench.evaluate.detection_eval import evaluate_model, predict
from enact_bench.evaluate.train_loop import train_steps


@pytest.fixture(scope="module")
def one_shape_root(tmp_path_factory):
    """One large shape per 64x64 image, one category: learnable in a few CPU seconds."""
    root = tmp_path_factory.mktemp("toy_learn")
    make_toy_coco(root, images=24, seed=0, categories=1, objects_per_image=(1, 1), object_frac=(0.5, 0.8),
                  min_side_px=64, max_side_px=64)
    return root


def test_box_predicted_in_resized_space_lands_on_original_pixels(one_shape_root):
    val = CocoDetection(one_shape_root, "val", size_scale=0.25)  # 64 px -> shorter side 200
    image, target = val[0]
    assert image.shape[-1] != int(target["orig_size"][1])  # really resized
    model = create_detector("detr_tiny", num_classes=2)
    # The model "predicts" the ground truth, in the resized image's normalised cxcywh.
    q = model.num_queries
    boxes = torch.full((1, q, 4), 0.5)
    boxes[0, 0] = target["boxes"][0]
    logits = torch.full((1, q, 3), -10.0)
    logits[0, :, 2] = 10.0  # no object
    logits[0, 0, 1], logits[0, 0, 2] = 10.0, -10.0
    outputs = {"pred_logits": logits, "pred_boxes": boxes}
    model.forward = lambda images, mask=None, targets=None: outputs  # noqa: ARG005
    results, ids, _ = predict(model, make_loader(torch.utils.data.Subset(val, [0]), 1),
                              val.category_map.category_of)
    best = max(results, key=lambda r: r["score"])
    ann = val.coco.loadAnns(val.coco.getAnnIds(imgIds=[val.ids[0]]))[0]
    assert best["category_id"] == ann["category_id"] and ids == [val.ids[0]]
    assert best["bbox"] == pytest.approx(ann["bbox"], abs=1e-3)


@pytest.mark.slow
def test_short_training_raises_val_map(one_shape_root):
    torch.manual_seed(0)
    train = CocoDetection(one_shape_root, "train", transforms=None)
    val = CocoDetection(one_shape_root, "val", transforms=None)
    model = create_detector("detr_tiny", num_classes=val.category_map.num_classes)
    loader = make_loader(val, 8)
    before = evaluate_model(model, val, loader).stats
    losses = train_steps(model, make_loader(train, 4, shuffle=True, seed=0), 70, lr=1e-3, lr_backbone=1e-3)
    after = evaluate_model(model, val, loader).stats
    print(f"toy val map before {before['map']:.4f} after {after['map']:.4f} (map_50 {before['map_50']:.3f} "
          f"-> {after['map_50']:.3f}); loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    assert sum(losses[-10:]) < sum(losses[:10])
    assert after["map"] > before["map"] + 0.03
    assert after["map_50"] > before["map_50"] + 0.2
