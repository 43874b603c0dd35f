"""What a deformable detector keeps for backward with msda="op" (the compiled op's contract: its
inputs) against msda="pytorch" (the autograd path: also the sampled values), on exact byte counts
from the CPU tracker (real tensors) and from FakeTensorMode (the estimate).

The formula (float32, 4 bytes per element). For one MSDeformAttn call with batch N, heads M,
channels per head D (C = M * D), levels L, points P, queries Lq and S value tokens:
- the op saves value (N, S, M, D), the sampling locations (N, Lq, M, L, P, 2), the attention
  weights (N, Lq, M, L, P) (also saved by their softmax, so alive in both paths), and the (L, 2)
  and (L,) int64 index tensors, made once per forward and shared by every call: 24 L bytes;
- the PyTorch path saves its per-level value copies (N*M, D, H_l, W_l), N*S*C in all, and grids
  (N*M, Lq, P, 2) per level, N*Lq*M*L*P*2 in all: the op's value and locations, byte for byte;
  plus the stacked sampled values (N*M, D, Lq, L*P) and the reshaped weights (N*M, 1, Lq, L*P)
  that their product saves.
So pytorch - op = sum over calls of 4 * N * M * Lq * L * P * (D + 1), minus 24 L once.
"""
from __future__ import annotations

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.detectors.common import ms_deform_attn as msda_module
from enact_bench.detectors.common.ms_deform_attn import MSDeformAttn
from enact_bench.data.batch import make_batch
from enact_bench.measure.train_step import measure_train_step
from enact_bench.predict.fake_step import estimate_train_step, use_fixed_assignment

F32 = 4


def _calls(model) -> list[dict]:
    """Record every MSDeformAttn call's sizes (works with fake tensors: shapes only)."""
    calls = []

    def hook(module, args):
        query, _, flat, shapes = args[:4]
        calls.append(dict(n=query.shape[0], lq=query.shape[1], s=flat.shape[1], m=module.n_heads,
                          d=module.d_model // module.n_heads, levels=len(shapes), p=module.n_points))

    for module in model.modules():
        if isinstance(module, MSDeformAttn):
            module.register_forward_pre_hook(hook)
    return calls


def sampled_bytes(c: dict) -> int:
    """What the PyTorch path keeps and the op does not: sampled values + reshaped weights."""
    return F32 * c["n"] * c["m"] * c["lq"] * c["levels"] * c["p"] * (c["d"] + 1)


def op_saved_bytes(c: dict) -> int:
    """The op's float inputs: value, sampling locations, attention weights (index tensors apart)."""
    n, m, d, lq, nl, p = c["n"], c["m"], c["d"], c["lq"], c["levels"], c["p"]
    return F32 * (n * c["s"] * m * d + n * lq * m * nl * p * 2 + n * lq * m * nl * p)


@pytest.mark.parametrize("msda", ["op", "pytorch"])
def test_each_call_saves_exactly_the_ops_inputs_or_also_the_sampled_values(msda, monkeypatch):
    """Hooks around the core call alone: what autograd packs there, per MSDeformAttn call."""
    packed_per_call = []
    target = "ms_deform_attn" if msda == "op" else "ms_deform_attn_core"
    inner = getattr(msda_module, target)

    def counting(*args):
        storages = {}

        def pack(t):
            storages[id(t.untyped_storage())] = (t.untyped_storage().nbytes(), t.dtype)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = inner(*args)
        inputs = {id(a.untyped_storage()) for a in args if isinstance(a, torch.Tensor)}
        packed_per_call.append((storages, inputs))
        return out

    monkeypatch.setattr(msda_module, target, counting)
    torch.manual_seed(0)
    model = create_detector("deformable_detr_tiny", num_classes=5, msda=msda)
    calls = _calls(model)
    criterion = model.build_criterion()
    measure_train_step(model, criterion, make_batch(2, (96, 128), num_classes=5, padded=True))
    measured = packed_per_call[-len(calls) // 2:]  # the measured (second) step
    assert len(measured) == 4 == model.cfg.enc_layers + model.cfg.dec_layers
    for (storages, inputs), c in zip(measured, calls[len(calls) // 2:]):
        float_bytes = sum(b for b, dt in storages.values() if dt.is_floating_point)
        index_bytes = sum(b for b, dt in storages.values() if not dt.is_floating_point)
        if msda == "op":
            assert set(storages) == inputs  # value, spatial shapes, level starts, locations, weights
            assert float_bytes == op_saved_bytes(c)
            assert index_bytes == 8 * c["levels"] * 3
        else:
            assert float_bytes == op_saved_bytes(c) - F32 * c["n"] * c["lq"] * c["m"] * c["levels"] * c["p"] \
                + sampled_bytes(c)  # value copies + grids + stacked samples + reshaped weights
            assert index_bytes == 0


def test_training_step_saves_the_sampled_values_only_on_the_pytorch_path():
    """The whole step's saved_for_backward_bytes (CPU tracker, real tensors)."""
    saved, calls = {}, {}
    for msda in ("op", "pytorch"):
        torch.manual_seed(0)
        model = create_detector("deformable_detr_tiny", num_classes=5, msda=msda)
        calls[msda] = _calls(model)
        criterion = model.build_criterion()
        use_fixed_assignment(criterion)
        saved[msda] = measure_train_step(model, criterion, make_batch(2, (96, 128), num_classes=5))
    step = calls["op"][len(calls["op"]) // 2:]
    levels = step[0]["levels"]
    assert [c["lq"] for c in step] == [12 * 16 + 6 * 8 + 3 * 4 + 2 * 2] * 2 + [20] * 2  # encoder tokens, queries
    want = sum(sampled_bytes(c) for c in step) - 24 * levels
    assert saved["pytorch"].saved_for_backward_bytes - saved["op"].saved_for_backward_bytes == want == 2_402_208


def test_fake_step_peak_is_lower_by_the_sampled_values():
    """FakeTensorMode estimate (the full-size procedure) at a tiny size. With 300 queries the last
    steps of the forward outweigh any transient in the encoder, so both paths peak where every
    saved tensor is alive, and the peaks differ by exactly the saved sampled values."""
    peaks, calls = {}, {}
    for msda in ("op", "pytorch"):
        torch.manual_seed(0)
        model = create_detector("deformable_detr_tiny", num_queries=300, msda=msda)
        calls[msda] = _calls(model)
        peaks[msda] = estimate_train_step(model, model.build_criterion(), 2, (96, 128))
    step = calls["op"][len(calls["op"]) // 2:]
    want = sum(sampled_bytes(c) for c in step) - 24 * step[0]["levels"]
    assert peaks["pytorch"].saved_for_backward_bytes - peaks["op"].saved_for_backward_bytes == want
    assert peaks["pytorch"].peak_bytes - peaks["op"].peak_bytes == want == 4_839_328
    assert peaks["op"].start_bytes == peaks["pytorch"].start_bytes


@pytest.mark.parametrize("msda", ["op", "pytorch"])
def test_fake_estimate_equals_the_real_tracked_step(msda):
    """The op's fake implementations allocate what its CPU implementation returns, to the byte.

    The garbage collector starts from a clean slate: the two-stage model discards graph branches
    that FlopCounterMode's module tracker (its backward hooks) ties into reference cycles, freed
    whenever a collection runs, so what earlier tests left in the collector's generations would
    decide when (a 10,240-byte saved tensor, seen with tests/predict run as a whole)."""
    import gc

    gc.collect()
    steps = []
    for fake in (False, True):
        torch.manual_seed(0)
        model = create_detector("deformable_detr_tiny_two_stage", msda=msda, dropout=0.0)
        criterion = use_fixed_assignment(model.build_criterion())
        if fake:
            steps.append(estimate_train_step(model, criterion, 2, (96, 128)))
        else:
            steps.append(measure_train_step(model, criterion, make_batch(2, (96, 128))))
    real, fake = steps
    assert (fake.start_bytes, fake.peak_bytes, fake.end_bytes) == (real.start_bytes, real.peak_bytes, real.end_bytes)
    assert fake.saved_for_backward_bytes == real.saved_for_backward_bytes > 0
    assert fake.gflops_fwd_bwd == pytest.approx(real.gflops_fwd_bwd)


def test_records_say_which_implementation_ran():
    from enact_bench.run import run_case
    from enact_bench.suite import Case

    case = dict(detector="deformable_detr_tiny", image_size=(64, 96), batch_size=1, iters=1, warmup=1,
                device="cpu", cpu_threads=1, mode="train")
    r = run_case(Case(**case), run_id="t", suite="unit")
    assert r.status == "ok", r.error
    assert r.metrics["msda_impl"] == "pytorch_op" and r.case["attention"] == "ms_deform_attn_op"
    assert r.metrics["flops_uncounted_ops"] == []
    r = run_case(Case(**case, overrides={"msda": "pytorch"}), run_id="t", suite="unit")
    assert r.metrics["msda_impl"] == "pytorch_reference" and r.case["attention"] == "ms_deform_attn_pytorch"
    assert "aten.grid_sampler_2d" in r.metrics["flops_uncounted_ops"]  # the reference path's sampling
    r = run_case(Case(**{**case, "detector": "detr_tiny"}), run_id="t", suite="unit")
    assert r.metrics["msda_impl"] is None and "deformable" in r.null_reasons["msda_impl"]
