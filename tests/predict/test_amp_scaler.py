"""float16 on the CUDA target trains with torch.amp.GradScaler (predict/amp_scaler.py): its
tensors are counted, its step is taken, and bfloat16 and the CPU target have none."""
from __future__ import annotations

from functools import partial

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.predict.amp_scaler import FakeStepScaler, scaler_for
from enact_bench.predict.fake_step import FakeTrainer


def _step(dtype: str, target: str = "cuda"):
    trainer = FakeTrainer(partial(create_detector, "detr_tiny"), target=target, image_size=(64, 96),
                          autocast_dtype=dtype)
    return trainer, trainer.step(2)


@pytest.mark.slow
def test_float16_step_keeps_the_scalers_tensors_and_steps_the_optimizer():
    _, bf16 = _step("bfloat16")
    trainer, fp16 = _step("float16")
    scaler = scaler_for(trainer.optimizer)
    assert isinstance(scaler, FakeStepScaler)
    assert [t.dtype for t in scaler.state_tensors()] == [torch.float32, torch.int32]
    # the scale (float32) and the growth tracker (int32) are alive before the step: 8 bytes more
    assert fp16.start_bytes - bf16.start_bytes == 8
    # unscale_ computes the inverse scale in float64 (grad_scaler.py): two 8-byte tensors
    fp16_ops = [op for (kind, _, n), op in zip(fp16.events, fp16.event_ops) if kind == "alloc" and n == 8]
    assert "aten.reciprocal.default" in fp16_ops
    # at the peak (the optimizer step) the scaler holds one more tensor: the per-device copy of
    # found_inf that unscale_ left in its per-optimizer state (4 bytes, float32)
    assert fp16.peak_bytes - fp16.start_bytes == bf16.peak_bytes - bf16.start_bytes + 4
    assert scaler_for(trainer.optimizer) is scaler  # kept with the optimizer for the next step
    assert scaler._per_optimizer_states == {}  # update() ran: the per-step state was reset


def test_a_scaler_is_made_only_for_float16_on_the_cuda_target():
    from enact_bench.predict.cuda_policy import step_kernels
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    for target, dtype, expected in (("cuda", "float16", True), ("cuda", "bfloat16", False),
                                    ("cpu", "float16", False), ("cuda", None, False)):
        with step_kernels(target, autocast_dtype=dtype, optimizer=opt) as kernels:
            assert (kernels.scaler is not None) == expected, (target, dtype)
