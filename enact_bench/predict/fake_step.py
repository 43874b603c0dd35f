"""The training step without allocating: the model's parameters and buffers become fake tensors,
so only shapes flow, and the step's live tensors are tracked exactly as a real one's
(instrument/tracked_step.py: forward, loss, zero_grad, backward, gradient clipping, AdamW, the
original DETR engine's order; the second step measured, when gradients and optimizer state exist).

Fake tensors cannot carry data-dependent shapes, so ENACT needs a fixed cluster size
(EnactConfig(cluster_size=k)) and the Hungarian matcher is replaced by a fixed assignment of the
same size (query i <-> target i): the loss's share of memory is tiny and the sizes of all matched
tensors are unchanged.

`target` says whose kernels the step follows. "cpu" (the CI gate's exact figures, equal to a real
CPU step's): what the CPU runs, AdamW per tensor, SDPA as the CPU dispatches it. "cuda": what a
CUDA GPU runs (predict/cuda_policy.py step_kernels): AdamW and gradient clipping with foreach,
SDPA through the fused kernel CUDA would pick (output + logsumexp kept, dropout inside the kernel),
dropout as native_dropout (a bool mask kept), tensors built from Python data on the host unless
copied, CUDA's autocast lists and, for float16, a GradScaler.

`ddp=True` predicts one DistributedDataParallel rank: DDP's gradient buckets (predict/ddp_buckets.py:
the bytes of the trainable parameters, in the layout DDP rebuilds them to) are alive through the
whole step, so they are counted in with the parameters. The rank's batch is the same size as a
single process's (the originals' batch size is per GPU).

`estimate_train_step` fakes a built model in place and steps it once at one size; `FakeTrainer`
builds a model once (on the meta device) and steps it at any number of batch sizes (the plan).
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.data.batch import make_batch
from enact_bench.metrics import MIB
from enact_bench.instrument.live_tensors import ObservingFakeTensorMode
from enact_bench.choices import TARGETS
from enact_bench.predict.cuda_policy import CudaArch, step_kernels
from enact_bench.instrument.tracked_step import StepInstruments, StepMeasure, warm_up
from enact_bench.predict.ddp_buckets import make_bucket_tensors
from enact_bench.predict.sdpa_calls import SdpaCallLog
from enact_bench.train.optim import make_optimizer, prime_optimizer_state


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


def _swap_tensors(model: nn.Module, make) -> nn.Module:
    """Replace every parameter and buffer of `model` by make(tensor), in place; tied parameters
    stay tied (one replacement per original tensor) and parameters keep requires_grad."""
    memo: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(make(p.detach()), requires_grad=p.requires_grad)
                mod._parameters[name] = memo[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = make(b)
                mod._buffers[name] = memo[id(b)]
    return model


def fake_model(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """Swap every parameter and buffer of `model` for a fake tensor of the same shape, in place
    (FakeTensorMode.from_tensor: the model must hold real tensors)."""
    return _swap_tensors(model, mode.from_tensor)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return target


def fake_train_step(model: nn.Module, criterion: nn.Module, batch, *, optimizer=None,
                    clip_max_norm: float = 0.1, target: str = "cpu", warmup: str = "step",
                    count_flops: bool = True, record_events: bool = False, arch: CudaArch = CudaArch(),
                    autocast_dtype: str | None = None, probes: bool = True, breakdown: bool = False,
                    ddp: bool = False, host=None) -> StepMeasure:
    """Warm-up, then the measured step, on fake tensors (call under their FakeTensorMode), with the
    kernels of `target`: "cpu" (what the CPU runs) or "cuda" (module docstring).

    warmup: "step" | "prime" | "none" (instrument/tracked_step.warm_up). record_events keeps the
    tracker's ordered allocation/free stream (for the caching-allocator model). autocast_dtype
    ("bfloat16", "float16"): the forward and loss under autocast, with the op lists of `target`
    (cuda_policy.step_kernels; float16 on "cuda" adds a GradScaler). probes=False skips the
    saved-for-backward counter and the op recorder (faster; those fields then read 0 / []).
    breakdown=True also attributes the peak (instrument/breakdown.py; implies record_events and
    the saved-tensor counter); the figures measured are the same either way. ddp: DDP's gradient
    buckets alive through the step. host: the ObservingFakeTensorMode the step runs under
    (FakeTrainer's), for the tracker to observe from (the same figures)."""
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
        # the SDPA calls' inputs, for the kernels other GPUs would pick (predict/sdpa_calls.py)
        calls = SdpaCallLog.install(sdpa) if sdpa is not None else None
        warm_up(model, criterion, optimizer, batch, warmup, clip_max_norm=clip_max_norm, autocast=amp,
                foreach=foreach, scaler=scaler)
        if sdpa is not None:
            sdpa.counts.clear()  # count the measured step only
            calls.calls.clear()
        buckets = make_bucket_tensors(model) if ddp else []  # alive until this function returns
        inst = StepInstruments.build(model, criterion, optimizer, batch, probes=probes, count_flops=count_flops,
                                     record_events=record_events, breakdown=breakdown, fake=True, host=host,
                                     autocast=amp)
        inst.tracker.host_ops = kernels.host_ops
        start = inst.run(model, criterion, optimizer, batch, clip_max_norm=clip_max_norm, foreach=foreach,
                         extra_live=buckets + (scaler.state_tensors() if scaler is not None else []),
                         scaler=scaler)
    m = inst.measure(model, batch, start, t0=t0, fake=True, target=target,
                     sdpa_kernels=sdpa.counts if sdpa is not None else None, extra_live=buckets, ddp=ddp)
    m.sdpa_calls = calls.calls if calls is not None else None
    return m


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
        return fake_train_step(model, criterion, batch, clip_max_norm=clip_max_norm, target=target,
                               warmup=warmup, count_flops=count_flops, record_events=record_events, arch=arch,
                               breakdown=breakdown, ddp=ddp)


def predicted_gpu_fields(m: StepMeasure, gpu, reasons: dict) -> dict:
    """The CUDA-target estimate's predicted GPU figures for a record (MiB; all estimates):
    predicted_tensor_peak_mib (every live tensor), predicted_alloc_peak_mib / _reserved_peak_mib
    (the caching-allocator model over the step's allocation stream), predicted_device_used_mib
    (+ CUDA context and cuBLAS workspaces of `gpu`), predicted_fits, and the peak's breakdown."""
    from enact_bench.predict.device_memory import device_memory

    out = {"predicted_tensor_peak_mib": round(m.peak_bytes / MIB, 3),
           "predicted_breakdown_mib": m.breakdown.as_dict() if m.breakdown is not None else None,
           "predicted_sdpa_kernels": dict(m.sdpa_kernels)}
    mem = device_memory(m.events, gpu)
    if gpu is None:
        for k in ("predicted_device_used_mib", "predicted_fits", "predicted_gpu"):
            reasons[k] = "no gpu in the case: device memory needs a GPU's context and workspaces"
    else:
        out.update({"predicted_device_used_mib": round(mem.device_used_bytes / MIB, 3),
                    "predicted_fits": mem.device_used_bytes <= gpu.usable_bytes, "predicted_gpu": gpu.name})
    out.update({"predicted_alloc_peak_mib": round(mem.alloc_peak_bytes / MIB, 3),
                "predicted_reserved_peak_mib": round(mem.reserved_peak_bytes / MIB, 3)})
    return out


def fake_params_from(model: nn.Module, mode: FakeTensorMode, device: str = "cpu") -> nn.Module:
    """Give every parameter and buffer of `model` a fake tensor on `device` (the estimate's "cpu";
    "cuda" for predict/fake_cuda_reference.py) of the same shape, stride and dtype, in place,
    without reading its values (so `model` may live on the meta device: nothing real is ever
    allocated or initialised). Tied parameters stay tied."""
    def fake_like(t: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype, device=device)

    return _swap_tensors(model, fake_like)


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
        if target == "cuda" and autocast_dtype:  # read once here, not in each forked worker
            from enact_bench.predict.autocast_cuda import load_dispatcher_tables
            load_dispatcher_tables()
        self._primed = False

    def prime(self) -> None:
        """Create the gradients and AdamW state a first step would leave (prime_optimizer_state),
        now rather than at the first `step`: the same figures either way."""
        if not self._primed:
            with self.mode:
                prime_optimizer_state(self.model, self.optimizer)
            self._primed = True

    def step(self, batch_size: int, *, record_events: bool = True, breakdown: bool = False,
             image_size: tuple[int, int] | None = None) -> StepMeasure:
        """One steady-state step at `batch_size` images of `image_size` (default: the trainer's)."""
        with self.mode:
            batch = make_batch(batch_size, tuple(image_size or self.image_size), self.num_targets, self.num_classes)
            m = fake_train_step(self.model, self.criterion, batch, optimizer=self.optimizer,
                                clip_max_norm=self.clip_max_norm, target=self.target,
                                warmup="none" if self._primed else "prime", count_flops=False,
                                record_events=record_events, arch=self.arch,
                                autocast_dtype=self.autocast_dtype, probes=False, breakdown=breakdown,
                                ddp=self.ddp,
                                host=self.mode if isinstance(self.mode, ObservingFakeTensorMode) else None)
        self._primed = True
        return m
