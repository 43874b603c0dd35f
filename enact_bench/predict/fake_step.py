"""Peak live tensor bytes of one training step, measured exactly, with real or fake tensors.

`measure_train_step` runs two training steps (train/step.py's `train_step`: forward, loss,
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

`target` says whose kernels the step follows. "cpu" (the default, the CI gate's exact figures):
what the CPU runs, AdamW per tensor, SDPA as the CPU dispatches it. "cuda": what a CUDA GPU
runs (predict/cuda_policy.py): AdamW and gradient clipping with foreach, SDPA through the
fused kernel CUDA would pick (output + logsumexp kept, dropout inside the kernel), dropout as
native_dropout (a bool mask kept), CUDA's autocast lists and, for float16, a GradScaler.

`ddp=True` predicts one DistributedDataParallel rank: DDP's gradient buckets (predict/ddp_buckets.py:
the bytes of the trainable parameters, in the layout DDP rebuilds them to) are alive through the
whole step, so they are counted in with the parameters. The rank's batch is the same size as a
single process's (the originals' batch size is per GPU).
"""
from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from enact_bench.instrument.live_tensors import MIB, LiveTensorTracker, ObservingFakeTensorMode
from enact_bench.predict.cuda_policy import TARGETS, CudaArch, step_kernels
from enact_bench.instrument.step_probe import OpRecorder, SavedTensorCounter, attention_paths
from enact_bench.train.step import train_step


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
    padded=False gives a list of images (the harness's convention, and the original DETR's: the
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
    target: str = "cpu"  # whose kernels the step followed: "cpu" | "cuda" (predict/cuda_policy.py)
    sdpa_kernels: dict = field(default_factory=dict)  # cuda target: SDPA calls per modelled kernel
    # filled when asked for (breakdown=True / record_events=True): instrument/breakdown.py's
    # PeakBreakdown, and the ordered ("alloc" | "free", key, nbytes) stream for measure/allocator.replay
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


def _live_before_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                      batch: Batch) -> list[torch.Tensor]:
    # the criterion's buffers too (DETR's empty_weight, the no-object class weight, 368 B): the
    # originals move the criterion to the GPU with the model
    live = list(model.parameters()) + list(model.buffers()) + list(criterion.buffers())
    live += [p.grad for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        # AdamW's step counters are CPU tensors on CUDA too (not capturable, not fused), but the
        # in-place step += 1 makes the tracker see them anyway: counted under both targets (4 B each)
        live += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return live + batch.tensors()


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


def make_optimizer(model: nn.Module, foreach: bool | None = None) -> torch.optim.Optimizer:
    """AdamW with the detector's parameter groups when it has them (the original's), else defaults.

    foreach=None is torch's default (per tensor for CPU and fake tensors; foreach on CUDA)."""
    extra = {"foreach": True} if foreach else {}
    if hasattr(model, "param_groups"):
        kwargs = dict(getattr(model, "default_optimizer_kwargs", {}))
        return torch.optim.AdamW(model.param_groups(), **{k: v for k, v in kwargs.items() if k == "weight_decay"}, **extra)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4, **extra)


def prime_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Create what a first training step leaves behind, without running it: a zero gradient for
    every trainable parameter and AdamW's state (step, exp_avg, exp_avg_sq; max_exp_avg_sq with
    amsgrad) as torch.optim.Adam._init_group creates them. A step after this one sees the same
    live tensors as after a warm-up step, provided every trainable parameter gets a gradient
    (tests/predict check it per family)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                continue
            p.grad = torch.zeros_like(p)
            state = optimizer.state[p]
            if state:
                continue
            state["step"] = torch.tensor(0.0, dtype=torch.get_default_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def measure_train_step(model: nn.Module, criterion: nn.Module, batch: Batch, *, optimizer=None,
                       clip_max_norm: float = 0.1, fake: bool = False, target: str = "cpu",
                       warmup: str = "step", count_flops: bool = True, record_events: bool = False,
                       arch: CudaArch = CudaArch(), autocast_dtype: str | None = None,
                       probes: bool = True, breakdown: bool = False, ddp: bool = False,
                       host=None) -> StepMeasure:
    """Warm-up, then the measured step. Call under FakeTensorMode for fake tensors.

    warmup: "step" runs a first training step (creates gradients and optimizer state); "prime"
    creates them directly (prime_optimizer_state; half the work); "none" takes the model and
    optimizer as they are (a previous measured step already left them in steady state).
    target: "cpu" or "cuda" (module docstring). record_events keeps the tracker's ordered
    allocation/free stream (for the caching-allocator model). autocast_dtype ("bfloat16",
    "float16"): the forward and loss under autocast (the CPU's op lists;
    docs/gpu-estimate.md says where CUDA's differ) for target "cpu", CUDA's lists (and a GradScaler
    for float16) for "cuda" (cuda_policy.step_kernels). probes=False skips the saved-for-backward
    counter and the op recorder (faster; those fields then read 0 / []). breakdown=True also
    attributes the peak (instrument/breakdown.py; implies record_events and the saved-tensor
    counter); the figures measured are the same either way. host: the ObservingFakeTensorMode
    the step runs under (FakeTrainer's), for the tracker to observe from (the same figures)."""
    check_target(target)
    if warmup not in ("step", "prime", "none"):
        raise ValueError(f"warmup must be 'step', 'prime' or 'none', got {warmup!r}")
    t0 = time.perf_counter()
    model.train()
    criterion.train()
    foreach = True if target == "cuda" else None
    optimizer = optimizer or make_optimizer(model, foreach=foreach)
    with step_kernels(target, arch, autocast_dtype, optimizer) as kernels:
        sdpa, amp, scaler = kernels.sdpa, kernels.autocast, kernels.scaler
        if warmup == "step":
            train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                       clip_max_norm=clip_max_norm, autocast=amp, foreach=foreach, scaler=scaler)  # grads + state
        elif warmup == "prime":
            prime_optimizer_state(model, optimizer)
        if sdpa is not None:
            sdpa.counts.clear()  # count the measured step only
        if ddp:  # DDP's gradient buckets, alive until this function returns
            from enact_bench.predict.ddp_buckets import make_bucket_tensors
            buckets = make_bucket_tensors(model)
        else:
            buckets = []

        params = list(model.parameters())
        attribution = None
        if breakdown:
            from enact_bench.instrument.breakdown import StepAttribution
            attribution = StepAttribution(model, criterion, optimizer, batch, fake=fake, host=host)
            record_events = True
        saved = (SavedTensorCounter(exclude=params + list(model.buffers()),
                                    on_save=attribution.note_saved if attribution else None)
                 if probes or attribution else None)
        recorder = OpRecorder() if probes else None
        flops_fwd = FlopCounterMode(display=False) if count_flops else nullcontext()
        flops_bwd = FlopCounterMode(display=False) if count_flops else nullcontext()

        def forward_ctx():
            stack = ExitStack()
            if saved is not None:
                stack.enter_context(saved.counting())
            if recorder is not None:
                stack.enter_context(recorder)
            stack.enter_context(flops_fwd)
            stack.enter_context(amp())
            return stack

        backward_ctx = lambda: flops_bwd  # noqa: E731
        if attribution is not None:
            tracker = attribution.tracker
            fwd_inner, bwd_inner = forward_ctx, backward_ctx
            forward_ctx = lambda: attribution.forward(fwd_inner)  # noqa: E731
            backward_ctx = lambda: attribution.backward(bwd_inner)  # noqa: E731
        else:
            tracker = LiveTensorTracker(count_existing=False, record_events=record_events, host=host)
        tracker.host_ops = kernels.host_ops
        with tracker:
            for t in _live_before_step(model, criterion, optimizer, batch) + buckets + (
                    scaler.state_tensors() if scaler is not None else []):
                tracker._track(t)  # counted in explicitly (count_existing=False scans nothing)
            start = tracker.current_bytes
            tracker.reset_peak()
            if attribution is not None:
                attribution.begin()
            train_step(model, criterion, optimizer, batch.images, batch.targets, mask=batch.mask,
                       clip_max_norm=clip_max_norm, forward_ctx=forward_ctx, backward_ctx=backward_ctx,
                       foreach=foreach, scaler=scaler)
    fwd = flops_fwd.get_total_flops() if count_flops else 0
    bwd = flops_bwd.get_total_flops() if count_flops else 0
    return StepMeasure(
        peak_bytes=tracker.peak_bytes, start_bytes=start, end_bytes=tracker.end_bytes,
        saved_for_backward_bytes=saved.saved_bytes if saved is not None else 0,
        attention_paths=attention_paths(recorder.ops) if probes else [],
        gflops_fwd=fwd / 1e9, gflops_fwd_bwd=(fwd + bwd) / 1e9,
        params=sum(p.numel() for p in params),
        params_trainable=sum(p.numel() for p in params if p.requires_grad),
        fake=fake, seconds=time.perf_counter() - t0, ops=recorder.ops if probes else set(), target=target,
        sdpa_kernels=dict(sdpa.counts) if sdpa is not None else {},
        events=list(tracker.events) if record_events else None, input_bytes=_unique_bytes(batch.tensors()),
        breakdown=attribution.result() if attribution is not None else None,
        event_ops=_op_names(tracker.event_ops) if record_events else None,
        event_shapes=list(tracker.event_shapes) if record_events else None,
        event_classes=attribution.event_classes() if attribution is not None else None,
        ddp_bucket_bytes=sum(b.untyped_storage().nbytes() for b in buckets) if ddp else None,
    )


def _op_names(ops) -> list[str | None]:
    names: dict = {None: None}
    return [names[o] if o in names else names.setdefault(o, str(o)) for o in ops]


def estimate_train_step(model: nn.Module, criterion: nn.Module, batch_size: int,
                        image_size: tuple[int, int], *, num_targets: int = 6, num_classes: int = 91,
                        clip_max_norm: float = 0.1, target: str = "cpu", warmup: str = "step",
                        count_flops: bool = True, record_events: bool = False,
                        arch: CudaArch = CudaArch(), breakdown: bool = False, ddp: bool = False) -> StepMeasure:
    """Full-size peak without allocating: `model` (built on CPU) is made fake in place.

    The criterion's matcher is replaced by a fixed assignment; ENACT modules must have a fixed
    cluster size, or the forward fails on a data-dependent shape. target: "cpu" | "cuda".
    """
    check_target(target)
    use_fixed_assignment(criterion)
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_model(model, mode)
    fake_model(criterion, mode)  # e.g. DETR's empty_weight buffer
    with mode:
        batch = make_batch(batch_size, image_size, num_targets, num_classes)
        return measure_train_step(model, criterion, batch, clip_max_norm=clip_max_norm, fake=True, target=target,
                                  warmup=warmup, count_flops=count_flops, record_events=record_events, arch=arch,
                                  breakdown=breakdown, ddp=ddp)


def estimate_detector(name: str, batch_size: int, image_size: tuple[int, int], *, enact=False,
                      num_targets: int = 6, overrides: dict | None = None, target: str = "cpu",
                      warmup: str = "step", count_flops: bool = True, ddp: bool = False) -> StepMeasure:
    """`estimate_train_step` for a registered detector (random weights; ENACT needs cluster_size)."""
    from enact_bench.detectors import create_detector

    torch.manual_seed(0)
    model = create_detector(name, enact=enact, **(overrides or {}))
    clip = getattr(model, "grad_clip_max_norm", None) or 0.0
    return estimate_train_step(model, model.build_criterion(), batch_size, image_size,
                               num_targets=num_targets, num_classes=model.num_classes if hasattr(model, "num_classes") else 91,
                               clip_max_norm=clip, target=target, warmup=warmup, count_flops=count_flops, ddp=ddp)


def predicted_gpu_fields(m: StepMeasure, gpu, reasons: dict) -> dict:
    """The CUDA-target estimate's predicted GPU figures for a record (MiB; all estimates):
    predicted_tensor_peak_mib (every live tensor), predicted_alloc_peak_mib / _reserved_peak_mib
    (the caching-allocator model over the step's allocation stream), predicted_device_used_mib
    (+ CUDA context and cuBLAS workspaces of `gpu`), predicted_fits, and the peak's breakdown."""
    from enact_bench.predict.allocator import replay
    from enact_bench.predict.gpus import device_used_bytes, library_workspace_bytes

    out = {"predicted_tensor_peak_mib": round(m.peak_bytes / MIB, 3),
           "predicted_breakdown_mib": m.breakdown.as_dict() if m.breakdown is not None else None,
           "predicted_sdpa_kernels": dict(m.sdpa_kernels)}
    if gpu is None:
        stats = replay(m.events)
        for k in ("predicted_device_used_mib", "predicted_fits", "predicted_gpu"):
            reasons[k] = "no gpu in the case: device memory needs a GPU's context and workspaces"
    else:
        stats = replay(m.events, preallocate=library_workspace_bytes(gpu))
        dev = device_used_bytes(stats, gpu)
        out.update({"predicted_device_used_mib": round(dev / MIB, 3), "predicted_fits": dev <= gpu.usable_bytes,
                    "predicted_gpu": gpu.name})
    out.update({"predicted_alloc_peak_mib": round(stats.alloc_peak_bytes / MIB, 3),
                "predicted_reserved_peak_mib": round(stats.reserved_peak_bytes / MIB, 3)})
    return out


def fake_params_from(model: nn.Module, mode: FakeTensorMode, device: str = "cpu") -> nn.Module:
    """Give every parameter and buffer of `model` a fake tensor on `device` (the estimate's "cpu";
    "cuda" for predict/fake_cuda_reference.py) of the same shape, stride and dtype, in place,
    without reading its values (so `model` may live on the meta device: nothing real is ever
    allocated or initialised). Tied parameters stay tied."""
    memo: dict[int, torch.Tensor] = {}

    def fake_like(t: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)

    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(fake_like(p), requires_grad=p.requires_grad)
                mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = fake_like(b)
                mod._buffers[name] = memo[id(b)]
    return model


class FakeTrainer:
    """One detector, built once as fake tensors, stepped at any number of batch sizes.

    The model is built on the meta device (no weights initialised) and its parameters swapped
    for fake CPU tensors; the optimizer state is primed without a warm-up step
    (prime_optimizer_state). Each `step(batch_size)` is a steady-state training step: the previous
    step's gradients and AdamW state are alive when it starts, as on a GPU in training.
    If a detector cannot be built on the meta device, it is built for real and then faked.
    """

    def __init__(self, model_factory, *, target: str = "cuda", image_size: tuple[int, int] = (800, 1333),
                 num_targets: int = 6, clip_max_norm: float | None = None, arch: CudaArch = CudaArch(),
                 autocast_dtype: str | None = None, ddp: bool = False):
        check_target(target)
        self.autocast_dtype, self.ddp = autocast_dtype, ddp
        self.target, self.image_size, self.num_targets, self.arch = target, tuple(image_size), num_targets, arch
        # the step's tracker observes from inside the fake mode (cpu_memory.ObservingFakeTensorMode)
        self.mode = ObservingFakeTensorMode(allow_non_fake_inputs=False)
        try:
            with torch.device("meta"):
                model = model_factory()
        except Exception:  # noqa: BLE001 -- e.g. an init that reads values: build it for real
            model = None
        if model is not None:
            fake_params_from(model, self.mode)
        else:
            model = fake_model(model_factory(), self.mode)
        self.model = model
        self.criterion = use_fixed_assignment(fake_params_from(model.build_criterion(), self.mode))
        self.num_classes = getattr(model, "num_classes", 91)
        clip = clip_max_norm if clip_max_norm is not None else (getattr(model, "grad_clip_max_norm", None) or 0.0)
        self.clip_max_norm = clip
        with self.mode:
            self.optimizer = make_optimizer(model, foreach=True if target == "cuda" else None)
        self._primed = False

    def prime(self) -> None:
        """Create the gradients and AdamW state a first step would leave (prime_optimizer_state),
        now rather than at the first `step`: the same figures either way."""
        if not self._primed:
            with self.mode:
                prime_optimizer_state(self.model, self.optimizer)
            self._primed = True

    def step(self, batch_size: int, *, record_events: bool = True, breakdown: bool = False) -> StepMeasure:
        with self.mode:
            batch = make_batch(batch_size, self.image_size, self.num_targets, self.num_classes)
            m = measure_train_step(self.model, self.criterion, batch, optimizer=self.optimizer,
                                   clip_max_norm=self.clip_max_norm, fake=True, target=self.target,
                                   warmup="none" if self._primed else "prime", count_flops=False,
                                   record_events=record_events, arch=self.arch,
                                   autocast_dtype=self.autocast_dtype, probes=False, breakdown=breakdown,
                                   ddp=self.ddp,
                                   host=self.mode if isinstance(self.mode, ObservingFakeTensorMode) else None)
        self._primed = True
        return m
