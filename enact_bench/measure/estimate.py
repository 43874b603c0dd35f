"""Peak live tensor bytes of one training step, measured exactly, with real or fake tensors.

`measure_train_step` runs two training steps (measure/steps.py's `train_step`: forward, loss,
zero_grad, backward, gradient clipping, AdamW step, the original DETR engine's order) and
measures the second, when
gradients and optimizer state already exist. The peak counts every live tensor, like CUDA's
`max_memory_allocated`: parameters, buffers, gradients, optimizer state and inputs are counted
in explicitly before the step, then `LiveTensorTracker(count_existing=False)` follows every
storage the step creates or frees.

`estimate_train_step` does the same at full size without allocating: the model's parameters
and buffers become fake tensors (FakeTensorMode.from_tensor on device cpu), so only shapes
flow. Fake tensors cannot carry data-dependent shapes, so ENACT needs a fixed cluster size
(EnactConfig(cluster_size=k)) and the Hungarian matcher is replaced by a fixed assignment of
the same size (query i <-> target i): the loss's share of memory is tiny and the sizes of all
matched tensors are unchanged.

`ddp=True` predicts one DistributedDataParallel rank: DDP's gradient buckets (measure/ddp.py:
the bytes of the trainable parameters, in the layout DDP rebuilds them to) are alive through the
whole step, so they are counted in with the parameters. The rank's batch is the same size as a
single process's (the originals' batch size is per GPU).
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from enact_bench.measure.cpu_memory import MIB, LiveTensorTracker
from enact_bench.measure.step_probe import OpRecorder, SavedTensorCounter, attention_paths
from enact_bench.measure.steps import train_step


class FixedAssignmentMatcher(nn.Module):
    """Stands in for the Hungarian matcher: query i is matched to target i, for every target.

    Returns what DETR's HungarianMatcher returns: per image a pair (query indices, target
    indices) of int64 tensors of length n_targets. Needs num_queries >= n_targets.
    """

    @torch.no_grad()
    def forward(self, outputs, targets):
        num_queries = outputs["pred_logits"].shape[1]
        device = outputs["pred_logits"].device
        indices = []
        for t in targets:
            n = int(t["labels"].shape[0])
            if n > num_queries:
                raise ValueError(f"fixed assignment needs num_queries >= targets per image, got {n} > {num_queries}")
            idx = torch.arange(n, dtype=torch.int64, device=device)
            indices.append((idx, idx.clone()))
        return indices


def use_fixed_assignment(criterion: nn.Module) -> nn.Module:
    """Replace `criterion.matcher` (DETR-style criteria) by a FixedAssignmentMatcher, in place."""
    if not hasattr(criterion, "matcher"):
        raise TypeError(f"{type(criterion).__name__} has no `matcher` attribute to replace with a fixed assignment")
    criterion.matcher = FixedAssignmentMatcher()
    return criterion


@dataclass
class Batch:
    """A batch as the detectors take it: a list of (3, H, W) images (mask None; the model pads
    them into a new (B, 3, H, W) tensor, as the harness feeds them) or a padded
    (B, 3, H, W) tensor with its (B, H, W) mask; and DETR-style targets."""

    images: torch.Tensor | list[torch.Tensor]
    mask: torch.Tensor | None
    targets: list[dict]

    def tensors(self) -> list[torch.Tensor]:
        images = list(self.images) if isinstance(self.images, list) else [self.images]
        mask = [self.mask] if self.mask is not None else []
        return images + mask + [v for t in self.targets for v in t.values() if isinstance(v, torch.Tensor)]


def make_batch(batch_size: int, image_size: tuple[int, int], num_targets: int = 6,
               num_classes: int = 91, seed: int = 0, padded: bool = False) -> Batch:
    """Deterministic synthetic batch (works under FakeTensorMode too: then only shapes matter).

    Boxes are valid normalised cxcywh strictly inside the image; every image has `num_targets`.
    padded=False gives a list of images (the harness's and the DESIGN figure's convention: the
    list and the model's padded copy are both alive); True a padded tensor + mask (one copy).
    """
    if batch_size < 1 or num_targets < 1:
        raise ValueError(f"batch_size and num_targets must be >= 1, got {batch_size}, {num_targets}")
    h, w = image_size
    g = torch.Generator().manual_seed(seed) if not _fake_mode_active() else None
    if padded:
        images = torch.randn(batch_size, 3, h, w, generator=g)
        mask = torch.zeros(batch_size, h, w, dtype=torch.bool)  # all images full size: no padding
    else:
        images, mask = [torch.randn(3, h, w, generator=g) for _ in range(batch_size)], None
    targets = []
    for _ in range(batch_size):
        centre = 0.25 + 0.5 * torch.rand(num_targets, 2, generator=g)
        size = 0.05 + 0.4 * torch.rand(num_targets, 2, generator=g)
        labels = torch.randint(0, num_classes, (num_targets,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([centre, size], dim=1)})  # (n, 4)
    return Batch(images, mask, targets)


def _fake_mode_active() -> bool:
    from torch._guards import detect_fake_mode
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack()) or detect_fake_mode() is not None


def fake_model(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Swap every parameter and buffer of `model` for a fake tensor of the same shape, in place.

    Tied parameters stay tied (one fake tensor per real storage).
    """
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in memo:
                memo[id(p)] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
            mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = mode.from_tensor(b)
                mod._buffers[name] = memo[id(b)]
    return model


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
    # filled when asked for (breakdown=True / record_events=True): measure/breakdown.py's
    # PeakBreakdown, and the ordered ("alloc" | "free", key, nbytes) stream for measure/allocator.replay
    breakdown: object | None = field(default=None, repr=False)
    events: list | None = field(default=None, repr=False)
    ddp_bucket_bytes: int | None = None  # ddp=True: DDP's gradient buckets, counted in start_bytes

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


def _unique_bytes(tensors) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.layout == torch.strided:
            st = t.untyped_storage()
            seen[id(st)] = st.nbytes()
    return sum(seen.values())


def _live_before_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> list[torch.Tensor]:
    live = list(model.parameters()) + list(model.buffers())
    live += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        live += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return live + batch.tensors()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with the detector's parameter groups when it has them (the original's), else defaults."""
    if hasattr(model, "param_groups"):
        kwargs = dict(getattr(model, "default_optimizer_kwargs", {}))
        return torch.optim.AdamW(model.param_groups(), **{k: v for k, v in kwargs.items() if k == "weight_decay"})
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)


def measure_train_step(model: nn.Module, criterion: nn.Module, batch: Batch, *, optimizer=None,
                       clip_max_norm: float = 0.1, fake: bool = False, breakdown: bool = False,
                       record_events: bool = False, ddp: bool = False) -> StepMeasure:
    """Warm-up step, then the measured (second) step. Call under FakeTensorMode for fake tensors.

    breakdown=True also attributes the peak (measure/breakdown.py) and implies record_events; the
    figures measured are the same either way. ddp=True: DDP's gradient buckets are alive through
    the step (one rank's memory)."""
    t0 = time.perf_counter()
    model.train()
    criterion.train()
    optimizer = optimizer or make_optimizer(model)
    train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
               clip_max_norm=clip_max_norm)  # creates grads + optimizer state
    if ddp:
        from enact_bench.measure.ddp import make_bucket_tensors
        buckets = make_bucket_tensors(model)  # alive until this function returns
    else:
        buckets = []

    params = list(model.parameters())
    attribution = None
    if breakdown:
        from enact_bench.measure.breakdown import StepAttribution
        attribution = StepAttribution(model, criterion, optimizer, batch, fake=fake)
    saved = SavedTensorCounter(exclude=params + list(model.buffers()),
                               on_save=attribution.note_saved if attribution else None)
    recorder = OpRecorder()
    flops_fwd = FlopCounterMode(display=False)
    flops_bwd = FlopCounterMode(display=False)

    def forward_ctx():
        stack = ExitStack()
        stack.enter_context(saved.counting())
        stack.enter_context(recorder)
        stack.enter_context(flops_fwd)
        return stack

    backward_ctx = lambda: flops_bwd  # noqa: E731
    if attribution is not None:
        tracker_cm = attribution.tracker
        fwd_inner, bwd_inner = forward_ctx, backward_ctx
        forward_ctx = lambda: attribution.forward(fwd_inner)  # noqa: E731
        backward_ctx = lambda: attribution.backward(bwd_inner)  # noqa: E731
    else:
        tracker_cm = LiveTensorTracker(count_existing=False, record_events=record_events)
    with tracker_cm as tracker:
        for t in _live_before_step(model, optimizer, batch) + buckets:
            tracker._track(t)  # counted in explicitly (count_existing=False scans nothing)
        start = tracker.current_bytes
        tracker.reset_peak()
        if attribution is not None:
            attribution.begin()
        train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                   clip_max_norm=clip_max_norm, forward_ctx=forward_ctx, backward_ctx=backward_ctx)
    fwd = flops_fwd.get_total_flops()
    return StepMeasure(
        peak_bytes=tracker.peak_bytes, start_bytes=start, end_bytes=tracker.end_bytes,
        saved_for_backward_bytes=saved.saved_bytes, attention_paths=attention_paths(recorder.ops),
        gflops_fwd=fwd / 1e9, gflops_fwd_bwd=(fwd + flops_bwd.get_total_flops()) / 1e9,
        params=sum(p.numel() for p in params),
        params_trainable=sum(p.numel() for p in params if p.requires_grad),
        fake=fake, seconds=time.perf_counter() - t0, ops=recorder.ops,
        breakdown=attribution.result() if attribution is not None else None, events=tracker.events,
        ddp_bucket_bytes=sum(b.untyped_storage().nbytes() for b in buckets) if ddp else None,
    )


def estimate_train_step(model: nn.Module, criterion: nn.Module, batch_size: int,
                        image_size: tuple[int, int], *, num_targets: int = 6, num_classes: int = 91,
                        clip_max_norm: float = 0.1, breakdown: bool = False,
                        record_events: bool = False, ddp: bool = False) -> StepMeasure:
    """Full-size peak without allocating: `model` (built on CPU) is made fake in place.
    ddp=True: the peak of one DistributedDataParallel rank (its gradient buckets added).

    The criterion's matcher is replaced by a fixed assignment; ENACT modules must have a fixed
    cluster size, or the forward fails on a data-dependent shape.
    """
    use_fixed_assignment(criterion)
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_model(model, mode)
    fake_model(criterion, mode)  # e.g. DETR's empty_weight buffer
    with mode:
        batch = make_batch(batch_size, image_size, num_targets, num_classes)
        return measure_train_step(model, criterion, batch, clip_max_norm=clip_max_norm, fake=True,
                                  breakdown=breakdown, record_events=record_events, ddp=ddp)


def estimate_detector(name: str, batch_size: int, image_size: tuple[int, int], *, enact=False,
                      num_targets: int = 6, overrides: dict | None = None, ddp: bool = False) -> StepMeasure:
    """`estimate_train_step` for a registered detector (random weights; ENACT needs cluster_size)."""
    from enact_bench.detectors import create_detector

    torch.manual_seed(0)
    model = create_detector(name, enact=enact, **(overrides or {}))
    clip = getattr(model, "grad_clip_max_norm", None) or 0.0
    return estimate_train_step(model, model.build_criterion(), batch_size, image_size,
                               num_targets=num_targets, num_classes=model.num_classes if hasattr(model, "num_classes") else 91,
                               clip_max_norm=clip, ddp=ddp)
