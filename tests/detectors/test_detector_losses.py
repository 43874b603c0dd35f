"""Matcher and set criterion against known quantities (brute force, hand values, torchvision)."""
import itertools

import pytest
import torch
import torchvision

from enact_bench.detectors.common.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, generalized_box_iou
from enact_bench.detectors.common.criterion import FocalSetCriterion, SetCriterion, detr_weight_dict, sigmoid_focal_loss
from enact_bench.detectors.common.matcher import FocalClassCost, HungarianMatcher, softmax_class_cost


def _random_outputs(bs=2, q=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat([torch.rand(bs, q, 2, generator=g) * 0.5 + 0.25, torch.rand(bs, q, 2, generator=g) * 0.3 + 0.05], -1)
    return {"pred_logits": torch.randn(bs, q, k, generator=g), "pred_boxes": boxes}


TARGETS = [
    {"labels": torch.tensor([1, 3, 0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.4, 0.1, 0.3], [0.6, 0.7, 0.3, 0.2]])},
    {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.2, 0.1]])},
]


@pytest.mark.parametrize("class_cost", [softmax_class_cost, FocalClassCost()])
def test_matcher_finds_the_cheapest_assignment(class_cost):
    matcher = HungarianMatcher(1, 5, 2, class_cost=class_cost)
    outputs = _random_outputs()
    cost = matcher.cost_matrix(outputs, TARGETS)  # (B, Q, sum n)
    indices = matcher(outputs, TARGETS)
    offset = 0
    for b, (t, (pred, tgt)) in enumerate(zip(TARGETS, indices)):
        n = len(t["labels"])
        c = cost[b, :, offset:offset + n]
        best = min(sum(c[p, j] for j, p in enumerate(perm)) for perm in itertools.permutations(range(c.shape[0]), n))
        assert len(pred) == len(tgt) == n
        assert torch.isclose(c[pred, tgt].sum(), torch.as_tensor(best))
        offset += n


def test_matcher_cost_terms_by_hand():
    outputs = {"pred_logits": torch.tensor([[[2.0, 0.0, 1.0]]]), "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])}
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]])}]
    p = torch.softmax(torch.tensor([2.0, 0.0, 1.0]), -1)[2]
    giou = 0.04 / 0.08  # pred inside target: IoU = area ratio, hull = target
    expected = 1 * -p + 5 * 0.2 + 2 * -giou
    assert torch.isclose(HungarianMatcher(1, 5, 2).cost_matrix(outputs, targets)[0, 0, 0], expected)


def test_matcher_without_targets():
    indices = HungarianMatcher()(_random_outputs(bs=1), [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}])
    assert len(indices[0][0]) == 0


def test_perfect_predictions_have_zero_box_losses_and_weights_are_detrs():
    k = 4
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.2, 0.4]])}]
    logits = torch.full((1, 5, k + 1), -10.0)
    logits[0, :, k] = 10.0  # everything "no object" ...
    logits[0, 0, 1], logits[0, 0, k], logits[0, 3, 2], logits[0, 3, k] = 10.0, -10.0, 10.0, -10.0  # ... but two hits
    boxes = torch.full((1, 5, 4), 0.5)
    boxes[0, 0], boxes[0, 3] = targets[0]["boxes"]
    weights = detr_weight_dict(num_aux=1)
    assert weights == {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2, "loss_ce_0": 1, "loss_bbox_0": 5, "loss_giou_0": 2}
    crit = SetCriterion(k, HungarianMatcher(), weights, eos_coef=0.1)
    out = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [{"pred_logits": logits, "pred_boxes": boxes}]}
    losses = crit(out, targets)
    assert set(losses) == {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error",
                           "loss_ce_0", "loss_bbox_0", "loss_giou_0", "cardinality_error_0"}
    assert losses["loss_bbox"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)
    assert losses["loss_ce"].item() < 1e-6 and losses["class_error"].item() == 0
    assert losses["cardinality_error"].item() == 0
    assert torch.allclose(crit.empty_weight, torch.tensor([1, 1, 1, 1, 0.1]))


def test_cross_entropy_uses_the_no_object_weight():
    k = 3
    logits = torch.zeros(1, 2, k + 1)  # uniform: CE = log(4) for every query
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    out = {"pred_logits": logits, "pred_boxes": torch.full((1, 2, 4), 0.5)}
    loss = SetCriterion(k, HungarianMatcher(), detr_weight_dict(num_aux=0), eos_coef=0.1)(out, targets)["loss_ce"]
    # weighted mean: (1 * log4 + 0.1 * log4) / (1 + 0.1) = log4
    assert loss.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-6)


def test_focal_loss_matches_torchvision_and_focal_criterion_runs():
    g = torch.Generator().manual_seed(0)
    logits, tgt = torch.randn(2, 6, 5, generator=g), (torch.rand(2, 6, 5, generator=g) > 0.7).float()
    ref = torchvision.ops.sigmoid_focal_loss(logits, tgt, alpha=0.25, gamma=2.0, reduction="none")
    assert torch.isclose(sigmoid_focal_loss(logits, tgt, 3.0), ref.mean(1).sum() / 3.0)
    crit = FocalSetCriterion(5, HungarianMatcher(2, 5, 2, class_cost=FocalClassCost()), detr_weight_dict(2, 5, 2, num_aux=0))
    losses = crit(_random_outputs(), TARGETS)
    assert {"loss_ce", "loss_bbox", "loss_giou", "class_error", "cardinality_error"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_box_ops():
    b = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    xyxy = box_cxcywh_to_xyxy(b)
    assert torch.allclose(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), b)
    assert torch.allclose(generalized_box_iou(xyxy, xyxy), torch.ones(1, 1))
    far = torch.tensor([[0.9, 0.9, 1.0, 1.0]])
    assert generalized_box_iou(xyxy, far).item() < 0
    with pytest.raises(ValueError, match="degenerate"):
        generalized_box_iou(torch.tensor([[0.5, 0.5, 0.4, 0.6]]), xyxy)
