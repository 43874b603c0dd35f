"""The CUDA target's forward + loss (fake CPU tensors, cuda_policy.step_kernels) against the same
forward + loss on fake CUDA tensors, through PyTorch's own CUDA dispatch and AutocastCUDA kernels
(predict/fake_cuda_reference.py): the same bytes, allocated and freed in the same order, for every
family, in float32, bfloat16 and float16."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.detectors import create_detector
from enact_bench.predict.fake_cuda_reference import forward_loss_memory
from enact_bench.data.batch import make_batch
from enact_bench.predict.fake_step import FakeTrainer, fake_params_from, use_fixed_assignment
from enact_bench.train.step import loss_of

FAMILIES = ("detr_tiny", "conditional_detr_tiny", "anchor_detr_tiny", "deformable_detr_tiny", "dino_tiny")
SIZE = (64, 96)


def _canonical(events):
    """The stream with each run of consecutive frees in sorted order. Autocast's cast cache is a
    hash map keyed by tensor address (autocast_mode.cpp), so the order in which the exit of an
    autocast region frees its casts is not defined on CUDA either; frees with no allocation
    between them leave the caching allocator in the same state in any order."""
    out, run = [], []
    for e in events:
        if e[0] == "free":
            run.append(e)
            continue
        out += sorted(run)
        run = []
        out.append(e)
    return out + sorted(run)


def _both(name, dtype, **overrides):
    factory = partial(create_detector, name, **overrides)
    return (forward_loss_memory(factory, 2, SIZE, device="cpu", autocast_dtype=dtype),
            forward_loss_memory(factory, 2, SIZE, device="cuda", autocast_dtype=dtype))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_cuda_target_forward_equals_fake_cuda_forward(name, dtype):
    ours, cuda = _both(name, dtype)
    assert (ours.peak_bytes, ours.end_bytes) == (cuda.peak_bytes, cuda.end_bytes)
    if dtype is None:  # no autocast cache: the very same stream
        assert ours.events == cuda.events
    else:
        assert _canonical(ours.events) == _canonical(cuda.events)
    assert len(ours.events) > 100


@pytest.mark.slow
def test_float16_forward_equals_fake_cuda_forward():
    ours, cuda = _both("detr_tiny", "float16")  # float16 softmax upcasts inside its kernel on CUDA
    assert _canonical(ours.events) == _canonical(cuda.events)


@pytest.mark.slow
def test_the_comparison_sees_the_cpu_kernels():
    """Without CUDA's kernels (the CPU target's forward), the reference differs: dropout alone."""
    factory = partial(create_detector, "detr_tiny")
    cuda = forward_loss_memory(factory, 2, SIZE, device="cuda")
    trainer = FakeTrainer(factory, target="cpu", image_size=SIZE)
    cpu_ops = trainer.step(2, record_events=True).event_ops
    assert "aten.native_dropout.default" in cuda.event_ops
    assert "aten.native_dropout.default" not in cpu_ops


def _softmax_outputs_saved(loss: torch.Tensor) -> list[torch.dtype]:
    """The dtype of every softmax output autograd keeps (SoftmaxBackward0's saved result)."""
    seen, stack, dtypes = set(), [loss.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "SoftmaxBackward0":
            dtypes.append(node._saved_result.dtype)
        stack.extend(n for n, _ in node.next_functions)
    return dtypes


def _cpu_autocast_loss(factory):
    """The forward + loss under the CPU's own autocast (torch.autocast("cpu"), the CPU target)."""
    mode = FakeTensorMode()
    with torch.device("meta"):
        model = factory()
    fake_params_from(model, mode)
    criterion = use_fixed_assignment(fake_params_from(model.build_criterion(), mode))
    with mode:
        batch = make_batch(2, SIZE)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_of(criterion, model(batch.images, None, targets=batch.targets), batch.targets)


@pytest.mark.slow
def test_bf16_detr_keeps_float32_softmax_outputs_as_cuda_does():
    factory = partial(create_detector, "detr_tiny")
    ours = forward_loss_memory(factory, 2, SIZE, device="cpu", autocast_dtype="bfloat16", keep_loss=True)
    cuda = forward_loss_memory(factory, 2, SIZE, device="cuda", autocast_dtype="bfloat16", keep_loss=True)
    layers = 2 + 2 * 2  # detr_tiny's attention: encoder self x 2, decoder self and cross x 2
    assert _softmax_outputs_saved(ours.loss) == _softmax_outputs_saved(cuda.loss) == [torch.float32] * layers
    assert _softmax_outputs_saved(_cpu_autocast_loss(factory)) == [torch.bfloat16] * layers  # the CPU's lists
