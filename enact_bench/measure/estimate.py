"""Peak live tensor bytes of one training step, measured exactly, with real or fake tensors.

`measure_train_step` runs two training steps (forward, loss, zero_grad, backward, gradient
clipping, AdamW step: the order of the original DETR engine) and measures the second, when
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
"""
from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from enact_bench.measure.cpu_memory import MIB, LiveTensorTracker
from enact_bench.measure.step_probe import OpRecorder, SavedTensorCounter, attention_paths


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
    them into a new (B, 3, H, W) tensor, as the harness's runner feeds them) or a padded
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
    padded=False gives a list of images (the runner's and the DESIGN figure's convention: the
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


def loss_of(criterion: nn.Module, outputs: dict, targets: list[dict]) -> torch.Tensor:
    losses = criterion(outputs, targets)
    weights = criterion.weight_dict
    return sum(losses[k] * weights[k] for k in losses if k in weights)


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


def train_step(model, criterion, optimizer, batch: Batch, clip_max_norm: float = 0.1,
               forward_ctx=nullcontext, backward_ctx=nullcontext) -> None:
    """One training step in the original DETR engine's order.

    The targets go into the forward too, as the runner and the originals' engines pass them:
    DINO builds its denoising queries from them in training (without them it would train, and
    be measured, without denoising); the other detectors ignore them."""
    with forward_ctx():
        outputs = model(batch.images, batch.mask, targets=batch.targets)
        loss = loss_of(criterion, outputs, batch.targets)
    del outputs
    optimizer.zero_grad()  # set_to_none: the previous step's gradients are freed here
    with backward_ctx():
        loss.backward()
    del loss
    if clip_max_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm)
    optimizer.step()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW with the detector's parameter groups when it has them (the original's), else defaults."""
    if hasattr(model, "param_groups"):
        kwargs = dict(getattr(model, "default_optimizer_kwargs", {}))
        return torch.optim.AdamW(model.param_groups(), **{k: v for k, v in kwargs.items() if k == "weight_decay"})
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)


def measure_train_step(model: nn.Module, criterion: nn.Module, batch: Batch, *, optimizer=None,
                       clip_max_norm: float = 0.1, fake: bool = False) -> StepMeasure:
    """Warm-up step, then the measured (second) step. Call under FakeTensorMode for fake tensors."""
    t0 = time.perf_counter()
    model.train()
    criterion.train()
    optimizer = optimizer or make_optimizer(model)
    train_step(model, criterion, optimizer, batch, clip_max_norm)  # creates grads + optimizer state

    params = list(model.parameters())
    saved = SavedTensorCounter(exclude=params + list(model.buffers()))
    recorder = OpRecorder()
    flops_fwd = FlopCounterMode(display=False)
    flops_bwd = FlopCounterMode(display=False)

    def forward_ctx():
        stack = ExitStack()
        stack.enter_context(saved.counting())
        stack.enter_context(recorder)
        stack.enter_context(flops_fwd)
        return stack

    with LiveTensorTracker(count_existing=False) as tracker:
        for t in _live_before_step(model, optimizer, batch):
            tracker._track(t)  # counted in explicitly (count_existing=False scans nothing)
        start = tracker.current_bytes
        tracker.reset_peak()
        train_step(model, criterion, optimizer, batch, clip_max_norm,
                   forward_ctx=forward_ctx, backward_ctx=lambda: flops_bwd)
    fwd = flops_fwd.get_total_flops()
    return StepMeasure(
        peak_bytes=tracker.peak_bytes, start_bytes=start, end_bytes=tracker.end_bytes,
        saved_for_backward_bytes=saved.saved_bytes, attention_paths=attention_paths(recorder.ops),
        gflops_fwd=fwd / 1e9, gflops_fwd_bwd=(fwd + flops_bwd.get_total_flops()) / 1e9,
        params=sum(p.numel() for p in params),
        params_trainable=sum(p.numel() for p in params if p.requires_grad),
        fake=fake, seconds=time.perf_counter() - t0, ops=recorder.ops,
    )


def estimate_train_step(model: nn.Module, criterion: nn.Module, batch_size: int,
                        image_size: tuple[int, int], *, num_targets: int = 6, num_classes: int = 91,
                        clip_max_norm: float = 0.1) -> StepMeasure:
    """Full-size peak without allocating: `model` (built on CPU) is made fake in place.

    The criterion's matcher is replaced by a fixed assignment; ENACT modules must have a fixed
    cluster size, or the forward fails on a data-dependent shape.
    """
    use_fixed_assignment(criterion)
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_model(model, mode)
    fake_model(criterion, mode)  # e.g. DETR's empty_weight buffer
    with mode:
        batch = make_batch(batch_size, image_size, num_targets, num_classes)
        return measure_train_step(model, criterion, batch, clip_max_norm=clip_max_norm, fake=True)


def estimate_detector(name: str, batch_size: int, image_size: tuple[int, int], *, enact=False,
                      num_targets: int = 6, overrides: dict | None = None) -> StepMeasure:
    """`estimate_train_step` for a registered detector (random weights; ENACT needs cluster_size)."""
    from enact_bench.detectors import create_detector

    torch.manual_seed(0)
    model = create_detector(name, enact=enact, **(overrides or {}))
    clip = getattr(model, "grad_clip_max_norm", None) or 0.0
    return estimate_train_step(model, model.build_criterion(), batch_size, image_size,
                               num_targets=num_targets, num_classes=model.num_classes if hasattr(model, "num_classes") else 91,
                               clip_max_norm=clip)


FAKE_NOT_MEASURED = (
    "mem_peak_alloc_mib", "mem_peak_reserved_mib", "nvml_device_used_peak_mib", "nvml_process_used_peak_mib",
    "cpu_tracked_peak_bytes", "cpu_tracked_peak_mib", "cpu_tracked_start_bytes", "rss_peak_mib",
    "step_ms_p50", "step_ms_p10", "step_ms_p90", "step_ms_mean", "step_ms_iqr", "step_count",
    "first_step_ms", "images_per_s", "timing_clock", "gmacs_fwd_bwd", "flops_uncounted_ops",
)


def measure_case_fake(case, metrics: dict, reasons: dict, record_case: dict) -> None:
    """Runner hook for a suite case with `fake = true`: fills the record's metrics.

    Writes fake_tracked_peak_bytes / _mib / fake_tracked_start_bytes (the estimate: every live
    tensor at the peak of the second training step), saved_for_backward_bytes, FLOPs, parameter
    counts and attention_paths; timing and real-memory fields are null with the reason.
    """
    import dataclasses

    from enact_bench.runner import build_model

    if case.mode != "train":
        raise ValueError(f"fake = true estimates a training step: mode must be 'train', got {case.mode!r}")
    if case.image_size is None:
        raise ValueError("fake = true needs a fixed image_size (\"HxW\")")
    if case.enact and (case.enact_config or {}).get("cluster_size") is None:
        raise ValueError("fake = true with ENACT needs a fixed cluster size: enact_config = {cluster_size = k} "
                         "(data-dependent shapes cannot be faked)")
    torch.manual_seed(case.seed)
    model = build_model(case)
    record_case["attention"] = getattr(model, "attention", None)
    cfg = getattr(model, "enact_config", None)
    record_case["enact_config"] = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None
    clip = case.clip_max_norm if case.clip_max_norm is not None else getattr(model, "grad_clip_max_norm", 0.1)
    m = estimate_train_step(model, model.build_criterion(), case.batch_size, case.image_size,
                            num_classes=case.num_classes, clip_max_norm=clip or 0.0)
    metrics.update(m.metrics())
    stats = model.enact_stats() if hasattr(model, "enact_stats") else []
    for mk, sk in (("enact_cluster_size", "cluster_size"), ("enact_key_len_before", "key_len_before"),
                   ("enact_key_len_after", "key_len_after")):
        if stats:
            metrics[mk] = [_plain(s.get(sk)) for s in stats]
        else:
            reasons[mk] = "ENACT is off"
    for k in FAKE_NOT_MEASURED:
        reasons.setdefault(k, "fake = true: shapes only (FakeTensorMode), nothing real was run or timed")


def _plain(v):
    if isinstance(v, torch.Tensor):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return int(v) if v is not None else None
