"""`enact-bench plan`: will this detector train at batch N on that GPU, and what do fused attention
or ENACT buy? Answered without a GPU, from the CUDA-target fake-tensor estimate.

Per detector and variant (original / fused / enact) the training step (forward, loss, backward,
gradient clipping, AdamW, as the originals train) runs under FakeTensorMode with CUDA's kernel
choices (measure/cuda_target.py); its ordered allocation stream goes through the model of
PyTorch's caching allocator (measure/allocator.py) for `max_memory_allocated` and
`max_memory_reserved`, and the CUDA context and library workspaces are added for the device
memory NVML would show (measure/gpus.py). A batch size "fits" when that device memory stays
under the GPU's memory less the margin.

Search (no --batch-size): a fake run at batch 2, then fake runs at 3 and 4. The allocation
streams at 2 and 3 are aligned op by op and every tensor's dimensions fitted, affine in the batch
(so DETR's loss's (targets x targets) box-IoU matrix over the batch is a quadratic in bytes), with
the per-image blocks (inputs, matcher, per-image loss indexing) repeated once per image
(measure/affine_stream.py); the stream synthesized for batch 4 must equal the fake run at 4
event by event. Where it does not, a fake run at 5 checks the older fit (every event's bytes
quadratic through 2, 3 and 4); where neither holds, every row stays a fake run of its own. With the
stream confirmed, the search's rows (the largest batch the secant guesses, the one after it, ...)
are that stream at the row's batch, replayed through the allocator model (~20 ms each, against
1-2 s for a fake step); each row says where it came from (`source`: "fake" | "affine"). The
breakdown hooks run in one probe (batch 3): the synthesized streams inherit its per-event
categories, and batch 2's row gets its breakdown the same way once the stream reproduces its
fake run. `--fake-runs` (affine=False) runs a fake step per row, as before.

Every model is built once per variant (on the meta device, then faked), its optimizer state
primed, and reused across batch sizes. With more than one job, a search runs its three probes in
three forked processes, one per batch size, each stepping every variant in turn: FakeTensorMode's
dispatch cache lives in the process, and the ops the variants share (backbone, decoder, loss, at
the same shapes) miss it once per batch size instead of once per variant (a cold step costs
1.6-1.8 s of CPU for DETR-R50, a warm one 0.9-1.3 s). Then each variant's fit and search runs in
a forked process of its own. Given batch sizes, or --fake-runs, each variant runs in its own
process throughout.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from enact_bench.errors import UserInputError
from enact_bench.suites import DTYPES

MIB = 2**20
VARIANTS = ("original", "fused", "enact")
LINEAR_TOLERANCE = 0.01  # relative: fake run's tensor peak vs the probes' line
DEFAULT_MARGIN_PCT = 5.0
DEFAULT_CLUSTER_SIZE = 6
MAX_SEARCH_STEPS = 12

# Largest side the originals' multi-scale training augmentation can produce (RandomResize(scales,
# max_size=1333) in each release's datasets/coco.py; DINO: data_aug_max_size = 1333 in
# config/DINO/DINO_4scale.py). `--image-size worst` pads a batch to max_size x max_size.
FAMILY_MAX_SIZE = {"detr": 1333, "conditional_detr": 1333, "anchor_detr": 1333, "deformable_detr": 1333,
                   "dino": 1333}

# Families whose encoder self-attention is dense (nn.MultiheadAttention): "fused" applies to them.
FUSED_FAMILIES = {"detr", "conditional_detr"}
FUSED_SKIP_REASON = {
    "anchor_detr": "Anchor DETR's encoder uses row-column decoupled attention (RCDA), not "
                   "nn.MultiheadAttention; there is no fused SDPA variant of it",
    "deformable_detr": "the encoder's self-attention is multi-scale deformable attention (no dense "
                       "attention matrix to fuse); its original is already the compiled op's memory",
    "dino": "the encoder's self-attention is multi-scale deformable attention (no dense attention "
            "matrix to fuse); its original is already the compiled op's memory",
}


def parse_hw(text: str, family: str | None = None) -> tuple[int, int]:
    """"HxW" -> (H, W); "worst" -> (max_size, max_size) of the family's augmentation."""
    t = str(text).strip().lower()
    if t == "worst":
        return (FAMILY_MAX_SIZE.get(family or "detr", 1333),) * 2
    parts = t.split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserInputError(f"--image-size {text!r}: expected HxW (e.g. 800x1333) or 'worst'")
    h, w = (int(p) for p in parts)
    if h < 32 or w < 32:
        raise UserInputError(f"--image-size {text!r}: both sides must be >= 32 pixels (the backbone's stride)")
    return h, w


@dataclass(frozen=True)
class VariantSpec:
    """How a variant is built from a detector name: create_detector(name, enact=..., **overrides)."""

    variant: str
    applicable: bool
    reason: str = ""
    enact_cluster_size: int | None = None
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")


# Overrides every variant of a family needs under fake tensors, with the reason shown in the plan.
# None today: DINO trains with its contrastive denoising queries (dn_number 100; with the plan's 6
# targets per image, 16 groups x 2 x 6 = 192 queries beside the 900), whose label noise is
# shape-stable under FakeTensorMode (detectors/dino_denoising.py).
FAKE_OVERRIDES: dict[str, tuple[dict, str]] = {}


def variant_spec(family: str, variant: str, cluster_size: int) -> VariantSpec:
    extra, why = FAKE_OVERRIDES.get(family, ({}, ""))
    note = f"; {why}" if why else ""
    if variant == "original":
        return VariantSpec("original", True, "the release's attention" + note, overrides=dict(extra))
    if variant == "fused":
        if family in FUSED_FAMILIES:
            return VariantSpec("fused", True, "encoder and decoder attention through SDPA (need_weights=False)" + note,
                               overrides={"attention": "sdpa", **extra})
        return VariantSpec("fused", False, FUSED_SKIP_REASON.get(family, f"no fused attention variant for {family}"))
    return VariantSpec("enact", True, f"ENACT at a fixed cluster size L = {cluster_size}" + note,
                       enact_cluster_size=cluster_size, overrides=dict(extra))


@dataclass(frozen=True)
class PlanRequest:
    detector: str
    gpu: object  # measure.gpus.GpuSpec
    image_size: tuple[int, int] = (800, 1333)
    batch_sizes: tuple[int, ...] = ()  # empty: search for the limit
    dtype: str = "float32"
    enact_cluster_size: int = DEFAULT_CLUSTER_SIZE
    variants: tuple[str, ...] = VARIANTS
    margin_pct: float = DEFAULT_MARGIN_PCT
    target: str = "cuda"
    jobs: int | None = None  # parallel variant processes (None: min(cores, variants))
    ddp: bool = False  # one DistributedDataParallel rank: its gradient buckets are live all step
    affine: bool = True  # search rows from the confirmed affine stream (False: a fake run per row)

    def __post_init__(self):
        if any((not isinstance(b, int)) or b < 1 for b in self.batch_sizes):
            raise UserInputError(f"--batch-size must be positive integers, got {list(self.batch_sizes)}")
        if self.dtype not in DTYPES:
            raise UserInputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.enact_cluster_size < 1:
            raise UserInputError(f"--enact-cluster-size must be >= 1, got {self.enact_cluster_size}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise UserInputError(f"--variants {','.join(self.variants)!r}: expected a comma list of {', '.join(VARIANTS)}")
        if not 0 <= self.margin_pct < 100:
            raise UserInputError(f"--margin {self.margin_pct}: expected a percentage in [0, 100)")
        if self.target not in ("cuda", "cpu"):
            raise UserInputError(f"target must be cuda or cpu, got {self.target!r}")

    @property
    def budget_bytes(self) -> int:
        """Device memory a plan may use: what a process can hold on the GPU (CUDA's total, see
        measure/gpus.py usable_mib) less the margin."""
        return int(self.gpu.usable_bytes * (1 - self.margin_pct / 100))


@dataclass
class PlanRow:
    batch_size: int
    tensor_peak_bytes: int  # every live tensor at the peak (the tracker's exact figure)
    alloc_peak_bytes: int  # predicted max_memory_allocated (caching-allocator model)
    reserved_peak_bytes: int  # predicted max_memory_reserved
    device_used_bytes: int  # predicted NVML used: reserved + workspaces + CUDA context
    fits: bool
    seconds: float
    breakdown_mib: dict | None = None
    sdpa_kernels: dict = field(default_factory=dict)
    modules_mib: dict | None = None
    peak_phase: str | None = None
    source: str = "fake"  # "fake": a fake run at this batch; "affine": the confirmed affine stream

    def as_dict(self) -> dict:
        return {"batch_size": self.batch_size,
                "tensor_peak_mib": round(self.tensor_peak_bytes / MIB, 1),
                "alloc_peak_mib": round(self.alloc_peak_bytes / MIB, 1),
                "reserved_peak_mib": round(self.reserved_peak_bytes / MIB, 1),
                "device_used_mib": round(self.device_used_bytes / MIB, 1),
                "fits": self.fits, "breakdown_mib": self.breakdown_mib, "modules_mib": self.modules_mib,
                "peak_phase": self.peak_phase,
                "tensor_peak_bytes": self.tensor_peak_bytes, "alloc_peak_bytes": self.alloc_peak_bytes,
                "reserved_peak_bytes": self.reserved_peak_bytes, "device_used_bytes": self.device_used_bytes,
                "sdpa_kernels": self.sdpa_kernels, "estimate_s": round(self.seconds, 2), "source": self.source}


@dataclass
class VariantPlan:
    variant: str
    applicable: bool
    reason: str
    max_batch_size: int | None = None  # None: not applicable; 0: not even batch 1 fits
    rows: list[PlanRow] = field(default_factory=list)
    linear: bool | None = None  # the probes' line agreed with the far fake runs (search only)
    searched: bool = True
    seconds: float = 0.0
    error: str | None = None
    enact_cluster_size: int | None = None
    overrides: dict = field(default_factory=dict)
    fake_runs: list[int] = field(default_factory=list)  # batch sizes run as fake steps (rows and probes)
    affine_confirmed_at: int | None = None  # the confirmed affine stream's check batch (None: none)
    affine_note: str | None = None
    ddp_bucket_bytes: int | None = None

    def as_dict(self) -> dict:
        return {"variant": self.variant, "applicable": self.applicable, "reason": self.reason,
                "fake_runs": self.fake_runs, "affine_confirmed_at": self.affine_confirmed_at,
                "affine_note": self.affine_note, "ddp_bucket_bytes": self.ddp_bucket_bytes,
                "max_batch_size": self.max_batch_size, "rows": [r.as_dict() for r in self.rows],
                "linear_in_batch": self.linear, "searched": self.searched, "seconds": round(self.seconds, 2),
                "error": self.error, "enact_cluster_size": self.enact_cluster_size, "overrides": self.overrides}


@dataclass
class DetectorPlan:
    request: PlanRequest
    family: str
    variants: list[VariantPlan]
    seconds: float = 0.0

    def as_dict(self) -> dict:
        r = self.request
        return {"detector": r.detector, "family": self.family, "target": r.target, "ddp": r.ddp, "gpu": r.gpu.as_dict(),
                "usable_mib": r.gpu.usable_mib,
                "image_size": list(r.image_size), "dtype": r.dtype, "margin_pct": r.margin_pct,
                "budget_mib": round(r.budget_bytes / MIB, 1), "enact_cluster_size": r.enact_cluster_size,
                "variants": [v.as_dict() for v in self.variants], "seconds": round(self.seconds, 2),
                "estimate": "FakeTensorMode training step (AdamW, clip), CUDA kernel policies, caching-allocator model; "
                            "device memory adds the CUDA context (an estimate per GPU) and cuBLAS workspaces"}


# ---------------------------------------------------------------------------------------
# one variant
# ---------------------------------------------------------------------------------------
def _factory(detector: str, spec: VariantSpec):
    from enact_bench.detectors import create_detector

    def build():
        enact = False
        if spec.enact_cluster_size is not None:
            from enact import EnactConfig
            enact = EnactConfig(cluster_size=spec.enact_cluster_size)
        return create_detector(detector, enact=enact, **spec.overrides)
    return build


def _breakdown(b) -> tuple[dict | None, dict | None, str | None]:
    """A PeakBreakdown (measure/breakdown.py) as: by category, by top-level module, phase."""
    if b is None:
        return None, None, None
    return b.as_dict(), b.modules_mib(), b.phase


AFFINE_PROBES = (2, 3)  # fake runs the stream is fitted through (measure/affine_stream.fit_shapes)
AFFINE_CONFIRM = 4  # and the fake run it must reproduce exactly before any row comes from it
AFFINE_FALLBACK = 5  # where it does not: `fit`'s quadratic through 2, 3, 4, confirmed at 5
AFFINE_ORIGIN = 3  # the probe whose per-event breakdown classes the synthesized streams inherit


def _trainer(req: PlanRequest, spec: VariantSpec):
    """The variant's FakeTrainer: its model built once (meta device, then fake tensors)."""
    import torch

    from enact_bench.measure.cuda_target import CudaArch
    from enact_bench.measure.estimate import FakeTrainer

    torch.manual_seed(0)
    return FakeTrainer(_factory(req.detector, spec), target=req.target, image_size=req.image_size,
                       arch=CudaArch(*req.gpu.compute_capability),
                       autocast_dtype=None if req.dtype == "float32" else req.dtype, ddp=req.ddp)


class _Runner:
    """One variant's rows. `trainer` and `measures` (batch -> StepMeasure of fake runs already
    made, e.g. the probes run beside the other variants') may come from the caller."""

    def __init__(self, req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None):
        self.req, self.spec = req, spec
        self._trainer = trainer
        self.rows: dict[int, PlanRow] = {}
        self.measures: dict = {}  # batch -> StepMeasure of a fake run (rows and probes)
        self.fixed_bytes: int | None = None
        self.ddp_bucket_bytes: int | None = None
        self.stream = None  # the confirmed AffineStream, when the probes confirm one
        self.affine_note: str | None = None  # why there is none
        for b in sorted(measures or {}):
            self._keep(b, measures[b])

    @property
    def trainer(self):
        if self._trainer is None:  # built when a fake run is first needed here
            self._trainer = _trainer(self.req, self.spec)
        return self._trainer

    def _keep(self, b: int, m) -> None:
        self.measures[b] = m
        if self.fixed_bytes is None:  # parameters, buffers, gradients, AdamW state (+ DDP buckets)
            self.fixed_bytes = m.start_bytes - m.input_bytes
            self.ddp_bucket_bytes = m.ddp_bucket_bytes

    def _fake(self, b: int, breakdown: bool):
        m = self.measures.get(b)
        if m is None or (breakdown and m.breakdown is None):
            m = self.trainer.step(b, record_events=True, breakdown=breakdown)
            self._keep(b, m)
        return m

    def fit_stream(self) -> None:
        """Probe fake runs at AFFINE_PROBES, fit the stream through them (shapes affine in the
        batch) and keep it when its synthesis at AFFINE_CONFIRM equals that fake run event by
        event. Where it does not, one more fake run at AFFINE_FALLBACK and `fit`'s quadratic
        through the three earlier ones, kept only if it reproduces that run exactly."""
        from enact_bench.measure.affine_stream import NotAffine, fit, fit_shapes

        if not self.req.affine:
            self.affine_note = "every row a fake run (--fake-runs)"
            return
        ms = [self._fake(b, breakdown=(b == AFFINE_ORIGIN)) for b in AFFINE_PROBES]
        try:  # the two probes must align before a third is worth running
            stream = fit_shapes(AFFINE_PROBES[0], [(m.events, m.event_ops, m.event_shapes) for m in ms])
        except NotAffine as e:
            self.affine_note = f"no affine stream ({e}): every row a fake run"
            return
        ms.append(self._fake(AFFINE_CONFIRM, breakdown=False))
        try:
            self._same_kernels(ms)
            self.stream = stream.confirm(AFFINE_CONFIRM, ms[-1].events)
            return
        except NotAffine as e:
            refused = str(e)
        ms.append(self._fake(AFFINE_FALLBACK, breakdown=False))
        try:
            self._same_kernels(ms)
            self.stream = fit(AFFINE_PROBES[0], [(m.events, m.event_ops) for m in ms[:3]]).confirm(
                AFFINE_FALLBACK, ms[-1].events)
            self.affine_note = (f"the shapes' fit was refused ({refused}); the quadratic fit through batch "
                                f"{AFFINE_PROBES[0]}-{AFFINE_CONFIRM}, confirmed at {AFFINE_FALLBACK}")
        except NotAffine as e:
            self.affine_note = f"no affine stream ({refused}; then {e}): every row a fake run"

    @staticmethod
    def _same_kernels(ms) -> None:
        from enact_bench.measure.affine_stream import NotAffine

        if len({repr(sorted(m.sdpa_kernels.items())) for m in ms}) != 1:
            raise NotAffine("the SDPA kernels chosen change with the batch size")

    def _row_from(self, b: int, events, peak_bytes: int, seconds: float, source: str, breakdown, kernels) -> PlanRow:
        from enact_bench.measure.allocator import replay
        from enact_bench.measure.gpus import device_used_bytes, library_workspace_bytes

        stats = replay(events, preallocate=library_workspace_bytes(self.req.gpu))
        dev = device_used_bytes(stats, self.req.gpu)
        cats, mods, phase = _breakdown(breakdown)
        return PlanRow(b, peak_bytes, stats.alloc_peak_bytes, stats.reserved_peak_bytes, dev,
                       dev <= self.req.budget_bytes, seconds, cats, dict(kernels), mods, phase, source)

    def row(self, b: int) -> PlanRow:
        if b in self.rows:
            return self.rows[b]
        t0 = time.perf_counter()
        if self.stream is not None and b >= self.stream.base_batch and b not in self.measures:
            events, origin = self.stream.synthesize(b)
            bd = self._stream_breakdown(events, origin)
            self.rows[b] = self._row_from(b, events, bd.peak_bytes, time.perf_counter() - t0, "affine", bd,
                                          self.measures[AFFINE_ORIGIN].sdpa_kernels)
        else:
            # the first row of a search (batch 2, a probe of the affine stream) runs without the
            # breakdown's hooks; `fit_stream` adds it from the stream (or a second fake run)
            lazy = self.req.affine and b == AFFINE_PROBES[0] and self.stream is None and self.affine_note is None
            ran_before = b in self.measures  # a probe: its fake run's time counts here
            m = self._fake(b, breakdown=not lazy)
            seconds = time.perf_counter() - t0 + (m.seconds if ran_before else 0.0)
            self.rows[b] = self._row_from(b, m.events, m.peak_bytes, seconds, "fake", m.breakdown, m.sdpa_kernels)
        return self.rows[b]

    def _fill_breakdown(self) -> None:
        """Rows of fake runs without a breakdown (the lazy batch-2 row): from the confirmed stream,
        whose synthesis at that batch is checked to be the fake run's stream, else a second run."""
        from enact_bench.measure.affine_stream import canonical

        for b, r in list(self.rows.items()):
            if r.breakdown_mib is not None:
                continue
            if self.stream is not None and b >= self.stream.base_batch:
                events, origin = self.stream.synthesize(b)
                if canonical(events) == canonical(self.measures[b].events):
                    r.breakdown_mib, r.modules_mib, r.peak_phase = _breakdown(self._stream_breakdown(events, origin))
                    continue
            m = self._fake(b, breakdown=True)
            r.breakdown_mib, r.modules_mib, r.peak_phase = _breakdown(m.breakdown)

    def _stream_breakdown(self, events, origin):
        from enact_bench.measure.breakdown import breakdown_of_stream

        cats, mods, phases = self.measures[AFFINE_ORIGIN].event_classes
        return breakdown_of_stream(events, {i: cats[o] for i, o in enumerate(origin) if events[i][0] == "alloc"},
                                   {i: mods[o] for i, o in enumerate(origin) if events[i][0] == "alloc"},
                                   [phases[o] for o in origin], fake=True)


def _search(run: _Runner) -> tuple[int, bool | None]:
    """Largest fitting batch size (0 if batch 1 does not fit) and whether the peak was linear.

    One probe at batch 2: its tensor peak less what does not grow with the batch (parameters,
    buffers, gradients, AdamW state) is the batch's share, so the slope is that share / 2. The
    first guess is the largest batch that slope allows; later guesses follow the secant through
    batch 2 and the last fake run's device memory (the allocator's rounding makes device memory
    only nearly linear). Ends when a fitting batch and the next one, which does not fit, have
    both been run. `linear`: every far fake run's tensor peak lies within LINEAR_TOLERANCE of
    the line through batch 2 with the first far run's slope (needs two far runs)."""
    r2 = run.row(2)
    if not r2.fits:
        run.affine_note = "batch 2 does not fit: no affine stream needed"
        run.row(1)
        run._fill_breakdown()
        return (1 if run.rows[1].fits else 0), None
    run.fit_stream()  # from here on, rows come from the confirmed affine stream where there is one
    run._fill_breakdown()
    budget = run.req.budget_bytes
    fixed = run.fixed_bytes
    slope = max((r2.tensor_peak_bytes - fixed) // 2, 1)
    lo, hi = 2, None  # largest batch known to fit, smallest known not to
    for _ in range(MAX_SEARCH_STEPS):
        guess = 2 + (budget - r2.device_used_bytes) // slope
        guess = max(guess, lo + 1) if hi is None else min(max(guess, lo + 1), hi - 1)
        if hi is not None and guess <= lo:
            break
        r = run.row(guess)
        if r.fits:
            lo = max(lo, guess)
        else:
            hi = guess if hi is None else min(hi, guess)
        if hi is not None and hi == lo + 1:
            break
        slope = max((r.device_used_bytes - r2.device_used_bytes) // (guess - 2), 1)
        if r.fits and (hi is None or guess + 1 < hi):  # the line says this is the last fitting batch
            nxt = run.row(guess + 1)
            if not nxt.fits:
                hi = guess + 1
                break
            lo = guess + 1
    else:
        raise RuntimeError(f"batch-size search did not settle in {MAX_SEARCH_STEPS} fake runs")
    far = sorted(b for b in run.rows if b > 2)
    linear = None
    if len(far) >= 2:
        b0 = far[0]
        t_slope = (run.rows[b0].tensor_peak_bytes - r2.tensor_peak_bytes) / (b0 - 2)
        linear = all(abs(run.rows[b].tensor_peak_bytes - (r2.tensor_peak_bytes + t_slope * (b - 2)))
                     <= LINEAR_TOLERANCE * run.rows[b].tensor_peak_bytes for b in far)
    return lo, linear


def plan_variant(req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None) -> VariantPlan:
    """One variant's plan; `trainer` and `measures` as _Runner takes them (their fake runs' time
    counts in `seconds`)."""
    t0 = time.perf_counter() - sum(m.seconds for m in (measures or {}).values())
    out = VariantPlan(spec.variant, spec.applicable, spec.reason, enact_cluster_size=spec.enact_cluster_size,
                      overrides=dict(spec.overrides))
    if not spec.applicable:
        return out
    try:
        run = _Runner(req, spec, trainer, measures)
        if req.batch_sizes:
            out.searched = False
            run.affine_note = "batch sizes given: each row a fake run"
            for b in req.batch_sizes:
                run.row(b)
            fitting = [b for b in req.batch_sizes if run.rows[b].fits]
            out.max_batch_size = max(fitting) if fitting else 0
        else:
            out.max_batch_size, out.linear = _search(run)
        out.rows = [run.rows[b] for b in sorted(run.rows)]
        out.fake_runs = sorted(run.measures)
        out.affine_confirmed_at = run.stream.confirmed_at if run.stream is not None else None
        out.affine_note, out.ddp_bucket_bytes = run.affine_note, run.ddp_bucket_bytes
    except Exception as e:  # noqa: BLE001 -- one variant failing is a result of the plan
        out.error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    out.seconds = time.perf_counter() - t0
    return out


# What forked workers inherit from plan_detector: the variants' trainers, built and primed once
# before the fork, and the probes' fake runs (variant -> batch -> StepMeasure).
_FORKED: dict = {"trainers": {}, "probes": {}}


def _plan_variant_job(args) -> VariantPlan:
    import torch
    torch.set_num_threads(1)
    req, spec = args
    return plan_variant(req, spec, _FORKED["trainers"].get(spec.variant), _FORKED["probes"].get(spec.variant))


def _probe_job(b: int) -> tuple[int, dict]:
    """The fake runs at one probe batch size, every variant in turn, in one process: FakeTensorMode's
    dispatch cache is shared within a process, so the backbone's, the decoder's and the loss's ops
    (the same shapes in every variant) miss it once here instead of once per variant (a third of a
    step's time goes to those misses). A variant that fails here runs again, and reports its
    error, in its own job."""
    import torch
    torch.set_num_threads(1)
    out = {}
    for variant, trainer in _FORKED["trainers"].items():
        try:
            out[variant] = trainer.step(b, record_events=True, breakdown=(b == AFFINE_ORIGIN))
        except Exception:  # noqa: BLE001 -- see the docstring
            pass
    return b, out


def _probe_all(req: PlanRequest, specs: list[VariantSpec], pool_of) -> None:
    """A search's probes (AFFINE_PROBES and AFFINE_CONFIRM) for all variants, one process per
    batch size; sets _FORKED for the variants' own jobs."""
    trainers = {}
    for spec in specs:
        try:
            trainers[spec.variant] = _trainer(req, spec)
            trainers[spec.variant].prime()
        except Exception:  # noqa: BLE001 -- the variant's own job builds it again and reports why
            trainers.pop(spec.variant, None)
    _FORKED["trainers"] = trainers
    batches = AFFINE_PROBES + (AFFINE_CONFIRM,)
    with pool_of(len(batches)) as pool:
        done = pool.map(_probe_job, batches, chunksize=1)
    _FORKED["probes"] = {v: {b: per[v] for b, per in done if v in per} for v in trainers}


# ---------------------------------------------------------------------------------------
# a detector
# ---------------------------------------------------------------------------------------
def detector_family(detector: str) -> str:
    from enact_bench.detectors.registry import get_spec

    try:
        return get_spec(detector).family
    except KeyError as e:
        raise UserInputError(str(e).strip("'\"")) from None


def _preload() -> None:
    import torch  # noqa: F401

    import enact  # noqa: F401
    import enact_bench.measure.allocator  # noqa: F401
    import enact_bench.measure.estimate  # noqa: F401
    from enact_bench.detectors import list_detectors

    list_detectors()  # imports every family module


def plan_detector(req: PlanRequest) -> DetectorPlan:
    t0 = time.perf_counter()
    family = detector_family(req.detector)
    specs = [variant_spec(family, v, req.enact_cluster_size) for v in req.variants]
    jobs = [(req, s) for s in specs if s.applicable]
    _preload()  # imported once here, shared by the forked workers
    # one process per variant even on fewer cores: the OS shares them, and the slowest variant
    # no longer waits for a core behind another one
    workers = req.jobs if req.jobs is not None else min(len(jobs), 4)
    if workers > 1 and len(jobs) > 1:
        import gc

        from enact_bench.lifeline import fork_pool

        # the ~400,000 objects of torch, torch._dynamo and sympy out of the garbage collector's
        # scans (a third of a second of collections per variant) and its writes into their pages,
        # which forked children would each copy
        gc.freeze()
        pool_of = fork_pool  # workers end with this process, even when it is killed
        try:
            if not req.batch_sizes and req.affine:  # a search: its probes first, batch by batch
                _probe_all(req, [s for _, s in jobs], pool_of)
            with pool_of(workers) as pool:
                results = pool.map(_plan_variant_job, jobs, chunksize=1)
        finally:
            gc.unfreeze()
            _FORKED.update(trainers={}, probes={})
        # torch refuses autograd in a child forked after the parent ran a backward (its autograd
        # threads exist): those variants run here instead
        results = [plan_variant(*j) if r.error and "Autograd-and-Fork" in r.error else r
                   for j, r in zip(jobs, results)]
        done = iter(results)
    else:
        done = iter([_plan_variant_job(j) for j in jobs])  # _FORKED is empty: each builds its own
    plans = [next(done) if s.applicable else plan_variant(req, s) for s in specs]
    return DetectorPlan(req, family, plans, time.perf_counter() - t0)


def margin_mib(req: PlanRequest) -> float:
    return req.gpu.memory_mib - req.budget_bytes / MIB


def fits_summary(plan: VariantPlan, req: PlanRequest) -> str:
    """One line: the largest batch and the headroom it leaves."""
    if not plan.applicable:
        return f"n/a: {plan.reason}"
    if plan.error:
        return f"error: {plan.error}"
    if plan.max_batch_size == 0:
        return "batch 1 does not fit"
    row = next((r for r in plan.rows if r.batch_size == plan.max_batch_size), None)
    if row is None:
        return f"max batch {plan.max_batch_size}"
    free = req.gpu.usable_mib - row.device_used_bytes / MIB
    return f"max batch {plan.max_batch_size} ({free:,.0f} MiB left of {req.gpu.usable_mib:,} usable)"

