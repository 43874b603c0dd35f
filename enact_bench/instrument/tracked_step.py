"""One training step under the instruments a caller chose: the piece the real measurement
(measure/train_step.py) and the fake step (predict/fake_step.py) share.

`StepInstruments.build` picks the instruments (live-tensor tracker, saved-tensor counter, op
recorder, FLOP counters, the peak's attribution) and `run` runs the step under them: the tensors
alive before the step (parameters, buffers, the criterion's buffers, gradients, optimizer state,
the batch, any `extra_live` such as DDP's buckets) are counted in explicitly, then the tracker
follows every storage the step creates or frees (train/step.py's train_step: forward, loss,
zero_grad, backward, clipping, AdamW). `StepMeasure` is what comes out, bytes exact.

Limitations: the step must be the steady-state one (gradients and optimizer state already exist;
the callers warm up first); storages created outside the tracker's view (another thread, C++
caches) are not seen.
"""
from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from enact_bench.instrument.live_tensors import LiveTensorTracker
from enact_bench.instrument.step_probe import OpRecorder, SavedTensorCounter, attention_paths
from enact_bench.metrics import MIB
from enact_bench.train.step import train_step


@dataclass
class StepMeasure:
    """What one steady-state training step measured (bytes exact; MiB = 2^20 bytes)."""

    peak_bytes: int  # every live tensor at the peak, like max_memory_allocated
    start_bytes: int  # alive before the step: parameters, buffers, grads, optimizer state, inputs
    end_bytes: int
    saved_for_backward_bytes: int  # unique storages autograd saved in the forward, not params
    attention_paths: list[str]  # kernels seen in the forward: "math", "sdpa_flash_cpu", ...
    gflops_fwd: float
    gflops_fwd_bwd: float
    params: int
    params_trainable: int
    fake: bool
    seconds: float
    ops: set[str] = field(default_factory=set, repr=False)
    target: str = "cpu"  # whose kernels the step followed: "cpu" | "cuda" (predict/cuda_policy.py)
    sdpa_kernels: dict = field(default_factory=dict)  # cuda target: SDPA calls per modelled kernel
    # filled when asked for (breakdown=True / record_events=True): instrument/breakdown.py's
    # PeakBreakdown, and the ordered ("alloc" | "free", key, nbytes) stream for predict/allocator.replay
    events: list | None = field(default=None, repr=False)
    input_bytes: int = 0  # the batch's share of start_bytes (images, mask, targets)
    breakdown: object | None = field(default=None, repr=False)
    ddp_bucket_bytes: int | None = None  # ddp=True: DDP's gradient buckets, counted in start_bytes
    # with record_events: per event the name of the op dispatching when it was recorded (e.g.
    # "aten.mm.default"; names, so that a measure pickles to another process; predict/stream_fit.py);
    # with breakdown: (category per alloc index, module group per alloc index, phase per event)
    event_ops: list | None = field(default=None, repr=False)
    event_classes: tuple | None = field(default=None, repr=False)
    event_shapes: list | None = field(default=None, repr=False)  # per alloc: (shape, element size) or None
    # the fake step's SDPA calls, what decides their kernel (predict/sdpa_calls.py), in order
    sdpa_calls: list | None = field(default=None, repr=False)
    # with record_events: how many of the first alloc events are the tensors alive before the step,
    # as (model and optimizer state, the batch, extra live tensors such as DDP's buckets)
    live_before_counts: tuple | None = None
    # a source model's fake step: what predict/fake_policy.py answered for its data-dependent code
    assumptions: list = field(default_factory=list)

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    @property
    def step_peak_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes

    def metrics(self) -> dict:
        """Record metric fields (CONTRACTS' names where they exist)."""
        prefix = "fake_" if self.fake else "cpu_"
        return {
            f"{prefix}tracked_peak_bytes": self.peak_bytes,
            f"{prefix}tracked_peak_mib": round(self.peak_bytes / MIB, 3),
            f"{prefix}tracked_start_bytes": self.start_bytes,
            "saved_for_backward_bytes": self.saved_for_backward_bytes,
            "gflops_fwd": round(self.gflops_fwd, 6),
            "gflops_fwd_bwd": round(self.gflops_fwd_bwd, 6),
            "gmacs_fwd": round(self.gflops_fwd / 2, 6),
            "params": self.params,
            "params_trainable": self.params_trainable,
            "attention_paths": self.attention_paths,
            **({"ddp_bucket_bytes": self.ddp_bucket_bytes} if self.ddp_bucket_bytes is not None else {}),
        }


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def live_before_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch) -> list:
    """The tensors alive when a steady-state step starts."""
    # the criterion's buffers too (DETR's empty_weight, the no-object class weight, 368 B): the
    # originals move the criterion to the GPU with the model
    live = list(model.parameters()) + list(model.buffers()) + list(criterion.buffers())
    live += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        # AdamW's step counters are CPU tensors on CUDA too (not capturable, not fused), but the
        # in-place step += 1 makes the tracker see them anyway: counted under both targets (4 B each)
        live += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return live + batch.tensors()


def warm_up(model: nn.Module, criterion: nn.Module, optimizer, batch, how: str, *, clip_max_norm: float,
            autocast: Callable = nullcontext, foreach: bool | None = None, scaler=None) -> None:
    """Bring the step to steady state. "step": a first training step (creates gradients and
    optimizer state); "prime": create them directly (train/optim.prime_optimizer_state; half the
    work); "none": the model and optimizer are already in steady state."""
    from enact_bench.train.optim import prime_optimizer_state

    if how == "step":
        train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                   clip_max_norm=clip_max_norm, autocast=autocast, foreach=foreach, scaler=scaler)
    elif how == "prime":
        prime_optimizer_state(model, optimizer)
    elif how != "none":
        raise ValueError(f"warmup must be 'step', 'prime' or 'none', got {how!r}")


@dataclass
class StepInstruments:
    """The instruments one measured step carries (each optional but the tracker)."""

    tracker: LiveTensorTracker
    saved: SavedTensorCounter | None = None
    recorder: OpRecorder | None = None
    flops: tuple[FlopCounterMode, FlopCounterMode] | None = None  # forward, backward
    attribution: object | None = None  # instrument/breakdown.StepAttribution
    autocast: Callable = nullcontext  # the forward and loss run under it
    live_before_counts: tuple | None = None  # set by `run` (StepMeasure.live_before_counts)

    @classmethod
    def build(cls, model: nn.Module, criterion: nn.Module, optimizer, batch, *, probes: bool = True,
              count_flops: bool = True, record_events: bool = False, breakdown: bool = False,
              fake: bool = False, host=None, autocast: Callable = nullcontext) -> "StepInstruments":
        """probes: the saved-for-backward counter and the op recorder; breakdown: the peak's
        attribution (implies the event stream and the saved-tensor counter); host: the
        ObservingFakeTensorMode the step runs under, for the tracker to observe from."""
        attribution = None
        if breakdown:
            from enact_bench.instrument.breakdown import StepAttribution
            attribution = StepAttribution(model, criterion, optimizer, batch, fake=fake, host=host)
        params = list(model.parameters())
        saved = (SavedTensorCounter(exclude=params + list(model.buffers()),
                                    on_save=attribution.note_saved if attribution else None)
                 if probes or attribution else None)
        recorder = OpRecorder() if probes else None
        flops = (FlopCounterMode(display=False), FlopCounterMode(display=False)) if count_flops else None
        tracker = (attribution.tracker if attribution is not None
                   else LiveTensorTracker(count_existing=False, record_events=record_events, host=host))
        return cls(tracker, saved, recorder, flops, attribution, autocast)

    @property
    def record_events(self) -> bool:
        return self.attribution is not None or self.tracker.events is not None

    def _forward_ctx(self):
        stack = ExitStack()
        if self.saved is not None:
            stack.enter_context(self.saved.counting())
        if self.recorder is not None:
            stack.enter_context(self.recorder)
        stack.enter_context(self.flops[0] if self.flops else nullcontext())
        stack.enter_context(self.autocast())
        return stack

    def _backward_ctx(self):
        return self.flops[1] if self.flops else nullcontext()

    def run(self, model: nn.Module, criterion: nn.Module, optimizer, batch, *, clip_max_norm: float,
            foreach: bool | None = None, extra_live=(), scaler=None) -> int:
        """The measured step under the instruments; returns the bytes alive when it started.
        scaler: float16's GradScaler (train/step.py train_step)."""
        fwd, bwd = self._forward_ctx, self._backward_ctx
        if self.attribution is not None:
            fwd = lambda: self.attribution.forward(self._forward_ctx)  # noqa: E731
            bwd = lambda: self.attribution.backward(self._backward_ctx)  # noqa: E731
        with self.tracker:
            live = live_before_step(model, criterion, optimizer, batch)
            n_batch = len(batch.tensors())  # live_before_step ends with the batch's tensors
            counts = []
            for group in (live[:len(live) - n_batch], live[len(live) - n_batch:], list(extra_live)):
                before = len(self.tracker.events) if self.tracker.events is not None else 0
                for t in group:
                    self.tracker._track(t)  # counted in explicitly (count_existing=False scans nothing)
                counts.append(len(self.tracker.events) - before if self.tracker.events is not None else 0)
            self.live_before_counts = tuple(counts)
            # no reference beyond the loop: the step frees the previous gradients (zero_grad)
            # and must see them go, as it does on a GPU
            del live, group
            t = None  # the loop's last tensor, too
            start = self.tracker.current_bytes
            self.tracker.reset_peak()
            if self.attribution is not None:
                self.attribution.begin()
            train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                       clip_max_norm=clip_max_norm, forward_ctx=fwd, backward_ctx=bwd, foreach=foreach,
                       scaler=scaler)
        return start

    def measure(self, model: nn.Module, batch, start: int, *, t0: float, fake: bool, target: str = "cpu",
                sdpa_kernels: dict | None = None, extra_live=(), ddp: bool = False) -> StepMeasure:
        """The StepMeasure of the step `run` ran (t0: when the caller's work began)."""
        params = list(model.parameters())
        fwd = self.flops[0].get_total_flops() if self.flops else 0
        bwd = self.flops[1].get_total_flops() if self.flops else 0
        tr, probes, events = self.tracker, self.recorder is not None, self.record_events
        return StepMeasure(
            peak_bytes=tr.peak_bytes, start_bytes=start, end_bytes=tr.end_bytes,
            saved_for_backward_bytes=self.saved.saved_bytes if self.saved is not None else 0,
            attention_paths=attention_paths(self.recorder.ops) if probes else [],
            gflops_fwd=fwd / 1e9, gflops_fwd_bwd=(fwd + bwd) / 1e9,
            params=sum(p.numel() for p in params),
            params_trainable=sum(p.numel() for p in params if p.requires_grad),
            fake=fake, seconds=time.perf_counter() - t0, ops=self.recorder.ops if probes else set(), target=target,
            sdpa_kernels=dict(sdpa_kernels or {}),
            events=list(tr.events) if events else None, input_bytes=unique_bytes(batch.tensors()),
            breakdown=self.attribution.result() if self.attribution is not None else None,
            event_ops=_op_names(tr.event_ops) if events else None,
            event_shapes=list(tr.event_shapes) if events else None,
            event_classes=self.attribution.event_classes() if self.attribution is not None else None,
            ddp_bucket_bytes=sum(b.untyped_storage().nbytes() for b in extra_live) if ddp else None,
            live_before_counts=self.live_before_counts if events else None,
        )


def _op_names(ops) -> list[str | None]:
    names: dict = {None: None}
    return [names[o] if o in names else names.setdefault(o, str(o)) for o in ops]
