"""The fake-tensor policy (predict/fake_policy.py) and the fake step of models we did not write:
answers counted, values known from the batch exact, and fake step == real CPU step to the byte."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.detectors import create_detector
from enact_bench.predict.fake_policy import FakePolicy
from enact_bench.data.batch import make_batch
from enact_bench.measure.train_step import measure_train_step
from enact_bench.predict.fake_step import estimate_train_step


def _under_policy(fn):
    policy = FakePolicy()
    with FakeTensorMode(), policy.applied(nn.Linear(1, 1)):
        result = fn()
    return result, policy


def test_guards_are_answered_as_a_valid_batch_and_counted():
    def guards():
        x = torch.randn(4, 4)
        finite = bool(torch.isfinite(x).all())
        nan = bool(torch.isnan(x).any())
        inf = bool(torch.isinf(x).any())
        boxes_ok = bool((x[:, 2:] >= x[:, :2]).all())
        return finite, nan, inf, boxes_ok

    answers, policy = _under_policy(guards)
    assert answers == (True, False, False, True)
    assert policy.summary() == ["(a >= b).all() check over unknown values (e.g. GIoU's box-format assert): True",
                                "isfinite(x).all() guard: True (finite activations)", "isinf(x).any() guard: False",
                                "isnan(x).any() guard: False"]


def test_values_known_from_shapes_are_exact_through_views_and_in_place_writes():
    def known():
        mask = torch.zeros(2, 8, dtype=torch.bool)
        mask[0, :3] = True  # written through a view
        mask[1, 5:] = True
        shapes = torch.empty((2, 2), dtype=torch.long)  # filled element by element, as RT-DETR v2 does
        shapes[0, 0], shapes[0, 1], shapes[1, 0], shapes[1, 1] = 4, 6, 2, 3
        idx = torch.nonzero(mask)
        return tuple(idx.shape), int((shapes[:, 0] * shapes[:, 1]).sum()), mask.sum().item()

    (idx_shape, total, count), policy = _under_policy(known)
    assert idx_shape == (6, 2) and total == 30 and count == 6
    assert "nonzero over tensors known from the batch: exact size" in policy.summary()


def test_unknown_values_are_never_guessed():
    with pytest.raises(RuntimeError, match="the fake-tensor policy has no answer"):
        _under_policy(lambda: torch.randn(3).sum().item())
    with pytest.raises(RuntimeError, match="no answer"):
        _under_policy(lambda: bool((torch.randn(3) == 0).any()))
    (shape, _), policy = (_under_policy(lambda: (tuple(torch.nonzero(torch.randn(3, 4) > 0).shape), 0)))
    assert shape == (12, 2) and policy.summary() == ["nonzero of unknown values: bounded above (every element counted)"]


def test_scipy_matcher_gets_a_fixed_assignment_only_inside_and_only_for_fake_costs():
    import numpy as np
    import scipy.optimize

    from transformers.loss import loss_for_object_detection as hf_loss

    original = scipy.optimize.linear_sum_assignment
    rows, cols = scipy.optimize.linear_sum_assignment(np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert list(cols) == [1, 0]

    def match():
        assert hf_loss.linear_sum_assignment is not original  # every module holding it is patched
        return [a.tolist() for a in hf_loss.linear_sum_assignment(torch.randn(5, 3))]

    (r, c), policy = _under_policy(match)
    assert r == c == [0, 1, 2] and len(policy.answers) == 1
    assert hf_loss.linear_sum_assignment is original and scipy.optimize.linear_sum_assignment is original


BOUNDED = ("d_fine", "deimv2")  # its loss selects with masks of predicted values: the fake step bounds them above


@pytest.mark.parametrize("model_type", ["detr", "conditional_detr", "dab-detr", "table-transformer",
                                        "deformable_detr", "yolos", "rt_detr", "rt_detr_v2", "d_fine", "deimv2",
                                        "lw_detr", "rf_detr"])
def test_fake_step_equals_the_real_cpu_step_to_the_byte(model_type):
    """A tiny HF model, batch 2 at 64x96: the real CPU step's tracked peak and start bytes equal the
    fake step's, whose optimizer state is primed (no warm-up step) for the parameters its loss
    reaches (Conditional DETR and DAB-DETR leave a query_scale MLP without a gradient); D-FINE's and DEIMv2's
    fake peaks are upper bounds of the real ones (their boolean masks of predicted values)."""
    name = f"hf:{model_type}"
    torch.manual_seed(0)
    real_model = create_detector(name, tiny=True)
    clip = real_model.grad_clip_max_norm or 0.0
    batch = make_batch(2, (64, 96), num_targets=3, num_classes=real_model.num_classes)
    real = measure_train_step(real_model, real_model.build_criterion(), batch, clip_max_norm=clip, count_flops=False,
                              probes=False)
    fake_model = create_detector(name, tiny=True)
    fake = estimate_train_step(fake_model, fake_model.build_criterion(), 2, (64, 96), num_targets=3,
                               num_classes=fake_model.num_classes, clip_max_norm=clip, warmup="prime",
                               count_flops=False)
    assert any("Hungarian matcher" in a for a in fake.assumptions)
    if model_type in BOUNDED:  # boolean-mask indexing over unknown values counts every element
        assert fake.start_bytes == real.start_bytes and fake.peak_bytes >= real.peak_bytes
        assert any("bounded above" in a for a in fake.assumptions)
        return
    assert (fake.peak_bytes, fake.start_bytes) == (real.peak_bytes, real.start_bytes)
    assert sys.modules["transformers.utils.import_utils"].is_tracing.__module__.startswith("transformers")
