"""The fake-tensor estimate must equal the real-tensor tracked peak, to the byte."""
import copy

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.data.batch import make_batch
from enact_bench.measure.train_step import measure_train_step
from enact_bench.predict.fake_step import estimate_train_step, use_fixed_assignment

SIZE = (96, 128)


def _tiny(**overrides):
    torch.manual_seed(0)
    return create_detector("detr_tiny", **overrides)


@pytest.mark.parametrize("attention", ["mha", "sdpa"])
def test_fake_estimate_equals_real_tracked_peak(attention):
    model = _tiny(attention=attention, dropout=0.0)
    twin = copy.deepcopy(model)
    crit = use_fixed_assignment(model.build_criterion())
    batch = make_batch(2, SIZE, num_targets=3)
    real = measure_train_step(model, crit, batch)
    fake = estimate_train_step(twin, twin.build_criterion(), 2, SIZE, num_targets=3)
    assert fake.fake and not real.fake
    assert fake.start_bytes == real.start_bytes
    assert fake.peak_bytes == real.peak_bytes > real.start_bytes
    assert fake.end_bytes == real.end_bytes
    assert fake.saved_for_backward_bytes == real.saved_for_backward_bytes > 0
    assert fake.params == real.params == sum(p.numel() for p in model.parameters())
    assert fake.gflops_fwd == pytest.approx(real.gflops_fwd) and real.gflops_fwd > 0
    assert fake.attention_paths == real.attention_paths
    # alive before the step: params + grads + exp_avg + exp_avg_sq of the trained parameters,
    # the frozen parameters, the model's and the criterion's buffers (DETR's empty_weight, one
    # float per class and no-object), AdamW's `step` scalar per trained parameter, the batch
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = sum(p.numel() * 4 for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers()) + 4 * (91 + 1)
    inputs = sum(t.numel() * t.element_size() for t in batch.tensors())
    assert real.start_bytes == 16 * sum(p.numel() for p in trained) + frozen + buffers + 4 * len(trained) + inputs


def test_attention_path_recorded():
    # need_weights=False routes nn.MultiheadAttention through SDPA: the fused CPU kernel without
    # dropout; with dropout it falls back to the math path (full attention matrix stored), and
    # the recorded path and the saved bytes say so
    no_drop = estimate_train_step(_tiny(attention="sdpa", dropout=0.0), _tiny().build_criterion(), 1, SIZE)
    with_drop = estimate_train_step(_tiny(attention="sdpa", dropout=0.1), _tiny().build_criterion(), 1, SIZE)
    assert no_drop.attention_paths == ["sdpa_flash_cpu"]
    assert "math" in with_drop.attention_paths
    assert with_drop.saved_for_backward_bytes > no_drop.saved_for_backward_bytes
