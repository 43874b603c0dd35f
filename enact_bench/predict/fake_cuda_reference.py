"""The reference the CUDA target is held to: one forward + loss on fake *CUDA* tensors.

On a machine without a GPU, FakeTensorMode still creates tensors on device "cuda", and their ops
go through CUDA's own dispatch: aten::dropout takes native_dropout (Dropout.cpp's
is_fused_kernel_acceptable sees `is_cuda()`), and with CUDA's autocast state switched on by hand
(`torch.set_autocast_dtype("cuda", dt)`, `torch.set_autocast_enabled("cuda", True)`,
`torch.autocast_increment_nesting()`; `torch.autocast("cuda")` turns itself off without a device)
PyTorch's real AutocastCUDA kernels cast. The CUDA target (fake CPU tensors under
cuda_policy.step_kernels) must allocate the same bytes in the same order; `forward_loss_memory`
runs either and tests/predict/test_fake_cuda_reference.py holds them equal for every family.

What the reference cannot do, and what stands in:
- a backward (the autograd engine needs a CUDA context), so forward + loss only; the backward of
  the CUDA target is made of the same aten ops' autograd nodes (native_dropout's keeps the mask);
- SDPA's kernel choice (it reads the device's properties): cuda_policy.CudaSdpa, the CUDA
  target's own model of it, runs in both, so SDPA's kernels are tested elsewhere
  (tests/predict/test_cuda_policy.py), not here;
- a value: `.item()` on a fake CUDA tensor (the criterion's box count) reads 1; the value only
  scales the loss;
- host memory is not GPU memory: only CUDA tensors are counted. `torch.as_tensor(list, device=
  "cuda")` builds a host tensor and copies it to the GPU; the CUDA target counts its host tensor,
  of the same bytes and lifetime as the copy, in the copy's place.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from enact_bench.instrument.live_tensors import LiveTensorTracker, ObservingFakeTensorMode
from enact_bench.predict.cuda_policy import CudaArch, cuda_sdpa_policy, step_kernels
from enact_bench.data.batch import make_batch
from enact_bench.predict.fake_step import fake_params_from, use_fixed_assignment
from enact_bench.train.step import loss_of

DEVICES = ("cpu", "cuda")  # "cpu": the CUDA target on fake CPU tensors; "cuda": the reference


class _FakeCudaMode(ObservingFakeTensorMode):
    """Fake tensors whose CUDA scalars read 1 (module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "cuda":
            return True if args[0].dtype == torch.bool else (1.0 if args[0].is_floating_point() else 1)
        return super().__torch_dispatch__(func, types, args, kwargs)


class _CudaTensorTracker(LiveTensorTracker):
    """The live-tensor tracker, counting CUDA tensors only."""

    def _track(self, t):
        if isinstance(t, torch.Tensor) and t.device.type == "cuda":
            super()._track(t)

    def _track_late(self, t):
        if isinstance(t, torch.Tensor) and t.device.type == "cuda":
            super()._track_late(t)


@contextmanager
def cuda_autocast_state(dtype: torch.dtype):
    """PyTorch's AutocastCUDA kernels on, without a device: what torch.autocast("cuda") does on
    entry and exit (the cast cache cleared when the outermost region ends)."""
    prev_dtype, prev_enabled = torch.get_autocast_dtype("cuda"), torch.is_autocast_enabled("cuda")
    torch.set_autocast_dtype("cuda", dtype)
    torch.set_autocast_enabled("cuda", True)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", prev_enabled)
        torch.set_autocast_dtype("cuda", prev_dtype)


@dataclass(frozen=True)
class ForwardLossMemory:
    """One forward + loss: the tracker's figures (bytes) and its ordered stream."""

    device: str
    peak_bytes: int  # above what was alive before the forward (parameters, inputs)
    end_bytes: int  # alive after the loss (what autograd keeps for backward, the loss)
    events: tuple  # ("alloc" | "free", nbytes), in order
    event_ops: tuple  # the op that made each event (names), for locating a difference
    loss: torch.Tensor | None = None  # kept when asked (keep_loss): its graph holds the saved tensors


def forward_loss_memory(model_factory, batch_size: int, image_size: tuple[int, int], *, device: str,
                        autocast_dtype: str | None = None, num_targets: int = 6, arch: CudaArch = CudaArch(),
                        keep_loss: bool = False) -> ForwardLossMemory:
    """Build `model_factory()` on the meta device, give it fake tensors on `device`, and track one
    training-mode forward + loss (fixed-assignment matcher) at `batch_size` x `image_size`.
    device="cpu": the CUDA target (cuda_policy.step_kernels("cuda")); "cuda": the reference."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    dtype = getattr(torch, autocast_dtype) if autocast_dtype else None
    torch.manual_seed(0)
    with torch.device("meta"):
        model = model_factory()
    mode = _FakeCudaMode(allow_non_fake_inputs=False) if device == "cuda" else ObservingFakeTensorMode(
        allow_non_fake_inputs=False)
    fake_params_from(model, mode, device)
    criterion = use_fixed_assignment(fake_params_from(model.build_criterion(), mode, device))
    model.train()
    criterion.train()
    with mode, ExitStack() as stack:
        batch = make_batch(batch_size, image_size, num_targets, getattr(model, "num_classes", 91))
        if device == "cuda":
            images = [im.to("cuda") for im in batch.images]
            targets = [{k: v.to("cuda") for k, v in t.items()} for t in batch.targets]
            stack.enter_context(cuda_sdpa_policy(arch))
            amp = (lambda: cuda_autocast_state(dtype)) if dtype else nullcontext
            tracker = _CudaTensorTracker(count_existing=False, record_events=True, host=mode)
        else:
            images, targets = batch.images, batch.targets
            kernels = stack.enter_context(step_kernels("cuda", arch, autocast_dtype))
            amp = kernels.autocast
            tracker = LiveTensorTracker(count_existing=False, record_events=True, host=mode)
            tracker.host_ops = kernels.host_ops
        del batch
        with tracker:
            with amp():
                outputs = model(images, None, targets=targets)
                loss = loss_of(criterion, outputs, targets)
            del outputs
        if not keep_loss:
            loss = None
        ops = tuple(str(o) for o in tracker.event_ops)
        return ForwardLossMemory(device, tracker.peak_bytes, tracker.end_bytes,
                                 tuple((k, n) for k, _, n in tracker.events), ops, loss)
