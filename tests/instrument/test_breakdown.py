"""The tracker's event stream against its own peak, and the peak breakdown against quantities
computed from the model, the optimizer and the batch."""
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from enact_bench.detectors import create_detector
from enact_bench.predict.allocator import replay
from enact_bench.instrument.breakdown import CATEGORIES, MODULE_GROUPS
from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.data.batch import Batch, make_batch
from enact_bench.measure.train_step import measure_train_step
from enact_bench.predict.fake_step import estimate_train_step, use_fixed_assignment

SIZE = (64, 96)


def _unique_bytes(tensors) -> int:
    return sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in tensors}.values())


def _mlp_step(record_events):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(300, 700), nn.ReLU(), nn.Linear(700, 10))
    x = torch.randn(50, 300)
    with LiveTensorTracker(record_events=record_events) as t:
        net(x).square().mean().backward()
        del x
    return t


def test_event_stream_replays_to_the_trackers_own_peak():
    t = _mlp_step(record_events=True)
    plain = _mlp_step(record_events=False)
    assert (t.peak_bytes, t.start_bytes, t.end_bytes) == (plain.peak_bytes, plain.start_bytes, plain.end_bytes)
    assert plain.events is None
    # the storages counted in at the start come first, as allocs
    n_start = 0
    total = 0
    for kind, _, nbytes in t.events:
        if total == t.start_bytes:
            break
        assert kind == "alloc"
        total += nbytes
        n_start += 1
    assert total == t.start_bytes and n_start > 0
    exact = replay(t.events, mode="exact")
    assert exact.alloc_peak_bytes == exact.reserved_peak_bytes == t.peak_bytes
    cuda = replay(t.events)
    assert cuda.requested_peak_bytes == t.peak_bytes  # requested bytes are never rounded
    assert cuda.alloc_peak_bytes >= t.peak_bytes and cuda.reserved_peak_bytes >= cuda.alloc_peak_bytes
    n = len(t.events)
    torch.empty(10)  # recording stopped with the block
    assert len(t.events) == n


def _detr_tiny():
    torch.manual_seed(0)
    model = create_detector("detr_tiny")
    crit = use_fixed_assignment(model.build_criterion())
    return model, crit


def test_breakdown_sums_to_the_peak_and_matches_what_is_alive():
    model, crit = _detr_tiny()
    batch = make_batch(2, SIZE, num_targets=3)
    m = measure_train_step(model, crit, batch, breakdown=True)
    bd = m.breakdown
    ref_model, ref_crit = _detr_tiny()
    ref = measure_train_step(ref_model, ref_crit, make_batch(2, SIZE, num_targets=3))
    assert (m.peak_bytes, m.saved_for_backward_bytes) == (ref.peak_bytes, ref.saved_for_backward_bytes)
    assert bd.peak_bytes == m.peak_bytes
    assert sum(bd.categories_bytes.values()) == m.peak_bytes
    assert sum(bd.modules_bytes.values()) == m.peak_bytes
    assert tuple(bd.as_dict()) == CATEGORIES and tuple(bd.modules_mib()) == MODULE_GROUPS
    params = list(model.parameters())
    assert bd.categories_bytes["parameters"] == _unique_bytes(params)
    # measure_train_step counts the model's buffers in and the criterion's (DETR's 368-byte
    # empty_weight, on the GPU with the model in the originals)
    assert bd.categories_bytes["buffers"] == _unique_bytes(list(model.buffers()) + list(crit.buffers()))
    assert _unique_bytes(list(crit.buffers())) == 4 * (91 + 1)  # one weight per class and no-object
    assert bd.categories_bytes["inputs"] == _unique_bytes(batch.tensors())
    state = [v for s in _adamw_state_of_twin(model, crit, batch) for v in s]
    assert bd.categories_bytes["optimizer_state"] == _unique_bytes(state)
    # every trainable parameter has a gradient at any point of the step (last step's or this one's)
    assert bd.categories_bytes["gradients"] == _unique_bytes([p for p in params if p.requires_grad])
    assert bd.phase in ("forward", "backward", "optimizer")
    assert bd.modules_bytes["backbone"] >= _unique_bytes(list(model.backbone.parameters()))
    assert m.events is not None and replay(m.events, mode="exact").alloc_peak_bytes == m.peak_bytes


def _adamw_state_of_twin(model, crit, batch):
    """AdamW state after two steps of a twin: (exp_avg, exp_avg_sq, step) per trainable parameter."""
    from enact_bench.train.optim import make_optimizer
    from enact_bench.train.step import train_step
    opt = make_optimizer(model)
    train_step(model, crit, opt, batch.images, batch.targets, mask=batch.mask, clip_max_norm=0.1)
    return [[v for v in st.values() if isinstance(v, torch.Tensor)] for st in opt.state.values()]


def test_breakdown_under_fake_tensors_at_a_larger_size():
    plain_model = create_detector("detr_tiny")
    plain = estimate_train_step(plain_model, plain_model.build_criterion(), 2, (256, 320))
    model = create_detector("detr_tiny")
    m = estimate_train_step(model, model.build_criterion(), 2, (256, 320), breakdown=True)
    assert (m.peak_bytes, m.saved_for_backward_bytes) == (plain.peak_bytes, plain.saved_for_backward_bytes)
    bd = m.breakdown
    assert bd.fake and bd.peak_bytes == m.peak_bytes
    assert sum(bd.categories_bytes.values()) == sum(bd.modules_bytes.values()) == m.peak_bytes
    assert bd.categories_bytes["parameters"] == _unique_bytes(list(model.parameters()))
    # two 3x256x320 float images, and per image 6 int64 labels + 6x4 float boxes
    assert bd.categories_bytes["inputs"] == 2 * 3 * 256 * 320 * 4 + 2 * (6 * 8 + 6 * 4 * 4)


class _Toy(nn.Module):
    """backbone -> class_embed, called like a detector: model(images, mask) -> dict."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(256, 1024), nn.Tanh())
        self.class_embed = nn.Linear(1024, 8)

    def forward(self, images, mask=None, targets=None):  # the detectors' signature (train/step.py)
        return {"pred": self.class_embed(self.backbone(images))}


class _ToyLoss(nn.Module):
    weight_dict = {"loss_sq": 1.0}

    def forward(self, outputs, targets):
        return {"loss_sq": outputs["pred"].square().mean()}


def test_backward_allocations_go_to_the_module_whose_forward_made_the_node():
    torch.manual_seed(0)
    model, crit = _Toy(), _ToyLoss()
    batch = Batch(images=torch.randn(64, 256), targets=[])
    m = measure_train_step(model, crit, batch, clip_max_norm=0.0, breakdown=True)
    assert sum(m.breakdown.modules_bytes.values()) == m.peak_bytes
    from enact_bench.instrument import breakdown as bmod
    # re-run with the attribution at hand to read its tags
    att = {}
    orig = bmod.StepAttribution.result

    def keep(self):
        att["a"] = self
        return orig(self)

    bmod.StepAttribution.result = keep
    try:
        measure_train_step(model, crit, batch, clip_max_norm=0.0, breakdown=True)
    finally:
        bmod.StepAttribution.result = orig
    tr = att["a"].tracker
    bwd = {(tag, n) for tag, ph, (kind, _, n) in zip(tr.tags, tr.phases, tr.events) if ph == "backward" and kind == "alloc"}
    # the gradient w.r.t. the backbone's output (64 x 1024 floats) is made in class_embed's node;
    # backbone.0.weight's gradient (1024 x 256 floats) in the backbone's
    assert ("heads", 64 * 1024 * 4) in bwd
    assert ("backbone", 1024 * 256 * 4) in bwd
    fwd = {(tag, n) for tag, ph, (kind, _, n) in zip(tr.tags, tr.phases, tr.events) if ph == "forward" and kind == "alloc"}
    assert ("backbone", 64 * 1024 * 4) in fwd and ("heads", 64 * 8 * 4) in fwd


def test_saved_tensor_hooks_free_a_discarded_branch_at_once():
    """The saved-tensor counter's pack hook must not return the tensor it was given: an op's own
    output saved for its backward (sigmoid saves its result) would hold its grad_fn through the
    saved variable, a cycle only the garbage collector frees. Discarded without a backward, the
    branch's storages go the moment the last reference does, hooks or not."""
    import gc

    from enact_bench.instrument.step_probe import SavedTensorCounter

    torch.manual_seed(0)
    lin = nn.Linear(64, 64)
    x = torch.randn(32, 64)
    gc.disable()  # nothing may depend on a collection
    try:
        for hooks in (False, True):
            saved = SavedTensorCounter(exclude=list(lin.parameters()))
            with LiveTensorTracker() as t, (saved.counting() if hooks else nullcontext()):  # weights, x counted in
                branch = lin(x).sigmoid()
                assert t.current_bytes - t.start_bytes == 32 * 64 * 4  # the sigmoid's output (the linear's went)
                del branch
                assert t.current_bytes == t.start_bytes, hooks  # all of it gone with the branch
            assert saved.saved_bytes == (2 * 32 * 64 * 4 if hooks else 0)  # x (for the weight's gradient) and the sigmoid's output
    finally:
        gc.enable()


def test_the_breakdowns_hooks_leave_dinos_stream_as_it_is():
    """DINO's step discards graph branches (the two-stage proposals' selection); with the
    breakdown's hooks the fake step's allocation stream is the plain one, event by event."""
    from enact_bench.predict.stream_fit import canonical
    from enact_bench.predict.fake_step import FakeTrainer

    def stream(breakdown):
        t = FakeTrainer(lambda: create_detector("dino_tiny"), target="cuda", image_size=SIZE)
        return t.step(2, breakdown=breakdown)

    plain, hooked = stream(False), stream(True)
    assert canonical(hooked.events) == canonical(plain.events)
    assert hooked.breakdown.peak_bytes == plain.peak_bytes


@pytest.mark.parametrize("detector", ["detr_tiny", "deformable_detr_tiny_two_stage", "dino_tiny"])
def test_observing_from_inside_the_fake_mode_records_what_a_mode_above_it_records(detector):
    """FakeTrainer's tracker observes from inside its ObservingFakeTensorMode; a FakeTrainer whose
    mode is a plain FakeTensorMode (the tracker a dispatch mode above it) records the same stream,
    event by event, with and without the breakdown's hooks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from enact_bench.predict.stream_fit import canonical
    from enact_bench.instrument.live_tensors import ObservingFakeTensorMode
    from enact_bench.predict.fake_step import FakeTrainer, fake_params_from

    def trainer(observing):
        t = FakeTrainer(lambda: create_detector(detector), target="cuda", image_size=SIZE)
        assert isinstance(t.mode, ObservingFakeTensorMode)
        if not observing:  # the same model and state under a plain fake mode
            mode = FakeTensorMode(allow_non_fake_inputs=False)
            t.mode = mode
            fake_params_from(t.model, mode)
            fake_params_from(t.criterion, mode)
            with mode:
                from enact_bench.train.optim import make_optimizer
                t.optimizer = make_optimizer(t.model, foreach=True)
        return t

    for breakdown in (False, True):
        seen = [trainer(obs).step(2, breakdown=breakdown) for obs in (True, False)]
        assert canonical(seen[0].events) == canonical(seen[1].events), breakdown
        assert seen[0].event_ops == seen[1].event_ops and seen[0].peak_bytes == seen[1].peak_bytes
        if breakdown:
            assert seen[0].breakdown.as_dict() == seen[1].breakdown.as_dict()
