"""The plan's vocabulary: what is asked (PlanRequest), how each variant is built (VariantSpec,
variant_spec), and what comes back (PlanRow per batch size, VariantPlan per variant, DetectorPlan).

`enact-bench plan` answers "will this detector train at batch N on that GPU, and what do fused
attention or ENACT buy?" without a GPU. Per detector and variant (original / fused / enact) the
training step (forward, loss, backward, gradient clipping, AdamW, as the originals train) runs
under FakeTensorMode with CUDA's kernel choices (predict/cuda_policy.py); its ordered allocation
stream goes through the model of PyTorch's caching allocator (predict/allocator.py) for
`max_memory_allocated` and `max_memory_reserved`, and the CUDA context and library workspaces are
added for the device memory NVML would show (predict/gpus.py, predict/device_memory.py). A batch
size "fits" when that device memory stays under the GPU's memory less the margin.

Search (no --batch-size): a fake run at batch 2, then fake runs at 3 and 4. The allocation
streams at 2 and 3 are aligned op by op and every tensor's dimensions fitted, affine in the batch
(so DETR's loss's (targets x targets) box-IoU matrix over the batch is a quadratic in bytes), with
the per-image blocks (inputs, matcher, per-image loss indexing) repeated once per image
(predict/stream_fit.py); the stream synthesized for batch 4 must equal the fake run at 4
event by event. Where it does not, a fake run at 5 checks the older fit (every event's bytes
quadratic through 2, 3 and 4); where neither holds, every row stays a fake run of its own. With the
stream confirmed, the search's rows (the largest batch the secant guesses, the one after it, ...)
are that stream at the row's batch, replayed through the allocator model (~20 ms each, against
1-2 s for a fake step); each row says where it came from (`source`: "fake" | "affine"). The
breakdown hooks run in one probe (batch 3): the synthesized streams inherit its per-event
categories, and batch 2's row gets its breakdown the same way once the stream reproduces its
fake run. `--fake-runs` (affine=False) runs a fake step per row.

The control flow is predict/planner.py (plan_detector), the search predict/search.py
(VariantSearch), the process pool predict/pool.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from enact_bench.metrics import MIB
from enact_bench.errors import UserInputError
from enact_bench.choices import ALL_VARIANTS, DTYPES, SOURCE_ONLY_VARIANTS, TARGETS, VARIANTS
from enact_bench.predict.image_sizes import ImageSizes

LINEAR_TOLERANCE = 0.01  # relative: fake run's tensor peak vs the probes' line
DEFAULT_MARGIN_PCT = 5.0
DEFAULT_CLUSTER_SIZE = 6
MAX_SEARCH_STEPS = 12

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


def parse_hw(text: str) -> tuple[int, int]:
    """"HxW" -> (H, W) (a fixed --image-size)."""
    from enact_bench.predict.image_sizes import parse_image_size

    sizes = parse_image_size(text, None)
    if sizes.policy != "fixed":
        raise UserInputError(f"--image-size {text!r}: expected HxW (e.g. 800x1333)")
    return sizes.padded_hw


@dataclass(frozen=True)
class VariantSpec:
    """How a variant is built from a detector name: create_detector(name, enact=..., **overrides)."""

    variant: str
    applicable: bool
    reason: str = ""
    enact_cluster_size: int | None = None
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.variant not in ALL_VARIANTS:
            raise ValueError(f"variant must be one of {ALL_VARIANTS}, got {self.variant!r}")


def variant_spec(family: str, variant: str, cluster_size: int, detector: str | None = None,
                 overrides: dict | None = None) -> VariantSpec:
    """How `variant` is built for `family`: "original" (the release), "fused" (every attention
    through SDPA: `attention="sdpa"`), "enact" (ENACT in the encoder at cluster size L, the rest
    as released), "enact+fused" (ENACT in the encoder, every other attention through SDPA). The
    fused ones apply only where the encoder's attention is dense (FUSED_FAMILIES); elsewhere the
    spec is not applicable and says why. A source model (`detector` hf:..., a factory) takes its
    variants from detectors/sources.py (also "eager"), with the plan's --set `overrides` in each."""
    from enact_bench.detectors.sources import is_source_name

    if detector is not None and is_source_name(detector):
        return _source_variant_spec(detector, variant, cluster_size, overrides or {})
    if variant in SOURCE_ONLY_VARIANTS:
        return VariantSpec(variant, False, f"{variant!r} is a variant of source models (hf:..., factories); "
                                           f"the registered detectors' original is their release's attention")
    if variant not in VARIANTS:
        raise UserInputError(f"--variants: unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if variant == "original":
        return VariantSpec("original", True, "the release's attention")
    if variant == "enact":
        return VariantSpec("enact", True, f"ENACT at a fixed cluster size L = {cluster_size}",
                           enact_cluster_size=cluster_size)
    if family not in FUSED_FAMILIES:
        why = FUSED_SKIP_REASON.get(family, f"no fused attention variant for {family}")
        return VariantSpec(variant, False, why if variant == "fused" else
                           f"{why}; ENACT with the release's other attention is the 'enact' variant")
    if variant == "fused":
        return VariantSpec("fused", True, "every attention through SDPA (need_weights=False)",
                           overrides={"attention": "sdpa"})
    return VariantSpec("enact+fused", True, f"ENACT (L = {cluster_size}) in the encoder, the decoder's self- and "
                                            f"cross-attention through SDPA", enact_cluster_size=cluster_size,
                       overrides={"attention": "sdpa"})


def _source_variant_spec(detector: str, variant: str, cluster_size: int, overrides: dict) -> VariantSpec:
    from enact_bench.detectors.sources import source_variants

    (sv,) = source_variants(detector, (variant,))
    reason = sv.reason + (f" (L = {cluster_size})" if sv.enact else "")
    return VariantSpec(variant, sv.applicable, reason, enact_cluster_size=cluster_size if sv.enact else None,
                       overrides={**overrides, **sv.overrides} if sv.applicable else {})


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
    # the padded size per batch size (predict/image_sizes.py); None: `image_size` fixed. Given, it
    # sets `image_size` to its size for batches of 2 or more
    images: ImageSizes | None = None
    # --steps: replay this many steps of drawn shapes through one allocator model (0: none), the
    # draws' seed, the source images' ((h, w), count) (None: the labelled assumption) and their label
    steps: int = 0
    seed: int = 0
    source_sizes: tuple | None = None
    sources_label: str = ""
    augmentation: object | None = None  # data/augmentation_sizes.Augmentation for --steps (None: the family's)
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE: every variant's (a source model's config)
    curve_points: int = 0  # --plot: this many batch sizes more per variant, from the streams (VariantPlan.curve)

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise UserInputError(f"--steps must be a positive number of training steps, got {self.steps!r}")
        if self.images is None:
            object.__setattr__(self, "images", ImageSizes.fixed(tuple(self.image_size)))
        else:
            object.__setattr__(self, "image_size", self.images.padded_hw)
        if any((not isinstance(b, int)) or b < 1 for b in self.batch_sizes):
            raise UserInputError(f"--batch-size must be positive integers, got {list(self.batch_sizes)}")
        if self.dtype not in DTYPES:
            raise UserInputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.enact_cluster_size < 1:
            raise UserInputError(f"--enact-cluster-size must be >= 1, got {self.enact_cluster_size}")
        bad = [v for v in self.variants if v not in ALL_VARIANTS]
        if bad or not self.variants:
            raise UserInputError(f"--variants {','.join(self.variants)!r}: expected a comma list of "
                                 f"{', '.join(ALL_VARIANTS)}")
        if not 0 <= self.margin_pct < 100:
            raise UserInputError(f"--margin {self.margin_pct}: expected a percentage in [0, 100)")
        if self.target not in TARGETS:
            raise UserInputError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")

    def hw(self, batch: int) -> tuple[int, int]:
        """The padded (H, W) of a batch of `batch` images under this request's image sizes."""
        return self.images.hw(batch)

    def typical(self) -> "PlanRequest | None":
        """The same request at the typical batch size, fixed (run-worst only; else None)."""
        import dataclasses

        if self.images.typical_hw is None:
            return None
        return dataclasses.replace(self, images=ImageSizes.fixed(self.images.typical_hw))

    @property
    def budget_bytes(self) -> int:
        """Device memory a plan may use: what a process can hold on the GPU (CUDA's total, see
        predict/gpus.py usable_mib) less the margin."""
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
    image_size: tuple[int, int] | None = None  # the padded (H, W) of this batch
    # run-worst plans: the same batch size at the typical image size (predict/image_sizes.py)
    typical_tensor_peak_bytes: int | None = None
    typical_device_used_bytes: int | None = None
    typical_fits: bool | None = None

    def set_typical(self, row: "PlanRow") -> None:
        self.typical_tensor_peak_bytes, self.typical_device_used_bytes = row.tensor_peak_bytes, row.device_used_bytes
        self.typical_fits = row.fits

    def as_dict(self) -> dict:
        typical = {}
        if self.typical_device_used_bytes is not None:
            typical = {"typical_tensor_peak_mib": round(self.typical_tensor_peak_bytes / MIB, 1),
                       "typical_device_used_mib": round(self.typical_device_used_bytes / MIB, 1),
                       "typical_fits": self.typical_fits}
        return {"batch_size": self.batch_size,
                "image_size": list(self.image_size) if self.image_size else None, **typical,
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
    # run-worst plans: the plan at the typical image size (its own search; None otherwise)
    typical: "VariantPlan | None" = None
    # --gpu all: the same variant's plan on each GPU (GPU name -> VariantPlan; not in as_dict: the
    # planner makes one DetectorPlan per GPU of them)
    gpu_plans: dict | None = None
    # --steps: the run of drawn shapes through one allocator model (predict/steps_plan.StepsResult)
    steps: object | None = None
    # a source model: what the fake-tensor policy answered (predict/fake_policy.py) and the attention
    # implementation the built model recorded (HF's config._attn_implementation)
    assumptions: list[str] = field(default_factory=list)
    attention: str | None = None
    user_error: bool = False  # the error is the user's to fix (a UserInputError: one line, exit 2 when all fail)
    # --plot: device memory at more batch sizes, from the streams: {"batch_size", "device_used_mib",
    # "typical_device_used_mib"} each
    curve: list = field(default_factory=list)

    def as_dict(self) -> dict:
        typical = {}
        if self.typical is not None:
            t = self.typical
            typical = {"typical_max_batch_size": t.max_batch_size,
                       "typical": {"max_batch_size": t.max_batch_size, "rows": [r.as_dict() for r in t.rows],
                                   "fake_runs": t.fake_runs, "affine_confirmed_at": t.affine_confirmed_at,
                                   "affine_note": t.affine_note, "error": t.error}}
        steps = {"steps": self.steps.as_dict()} if self.steps is not None else {}
        if self.curve:
            steps["curve"] = self.curve
        return {"variant": self.variant, "applicable": self.applicable, "reason": self.reason, **typical, **steps,
                "fake_runs": self.fake_runs, "affine_confirmed_at": self.affine_confirmed_at,
                "affine_note": self.affine_note, "ddp_bucket_bytes": self.ddp_bucket_bytes,
                "max_batch_size": self.max_batch_size, "rows": [r.as_dict() for r in self.rows],
                "linear_in_batch": self.linear, "searched": self.searched, "seconds": round(self.seconds, 2),
                "error": self.error, "enact_cluster_size": self.enact_cluster_size, "overrides": self.overrides,
                "assumptions": self.assumptions, "attention": self.attention}


@dataclass
class DetectorPlan:
    request: PlanRequest
    family: str
    variants: list[VariantPlan]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # a source model's quirks, planned as they are
    padded_size: tuple[int, int] | None = None  # the size the model pads a fixed-size batch to (its multiple)

    @property
    def size_note(self) -> str | None:
        h, w = self.request.image_size
        if self.padded_size is None or self.padded_size == (h, w):
            return None
        return (f"{h}x{w} padded to {self.padded_size[0]}x{self.padded_size[1]} (sides a multiple of "
                f"{_multiple_of(self.padded_size)}, as the model needs)")

    def as_dict(self) -> dict:
        r = self.request
        return {"detector": r.detector, "family": self.family, "target": r.target, "ddp": r.ddp, "gpu": r.gpu.as_dict(),
                "notes": self.notes, "padded_image_size": list(self.padded_size or r.image_size),
                "size_note": self.size_note, "overrides": r.overrides,
                "usable_mib": r.gpu.usable_mib, **r.images.as_dict(), "dtype": r.dtype, "margin_pct": r.margin_pct,
                "budget_mib": round(r.budget_bytes / MIB, 1), "enact_cluster_size": r.enact_cluster_size,
                "variants": [v.as_dict() for v in self.variants], "seconds": round(self.seconds, 2),
                "estimate": "FakeTensorMode training step (AdamW, clip), CUDA kernel policies, caching-allocator model; "
                            "device memory adds the CUDA context (an estimate per GPU) and cuBLAS workspaces"}


def _multiple_of(padded: tuple[int, int]) -> int:
    """The largest power of two (up to 1024) dividing both padded sides: the model's multiple."""
    m = 1
    while all(p % (m * 2) == 0 for p in padded) and m < 1024:
        m *= 2
    return m


def fits_summary(plan: VariantPlan, req: PlanRequest) -> str:
    """One line: the largest batch and the headroom it leaves (a search), or which of the batch
    sizes given fit (never "the largest": nothing was searched)."""
    if not plan.applicable:
        return f"n/a: {plan.reason}"
    if plan.error:
        return f"error: {plan.error}"
    if not plan.searched:
        fit = [r.batch_size for r in plan.rows if r.fits]
        out = [r.batch_size for r in plan.rows if not r.fits]
        return "; ".join(p for p in (f"fits at {', '.join(map(str, fit))}" if fit else "",
                                     f"does not fit at {', '.join(map(str, out))}" if out else "") if p)
    typical = ""
    if plan.typical is not None and plan.typical.max_batch_size is not None:
        typical = f"; typical {req.images.typical_hw[0]}x{req.images.typical_hw[1]}: max batch {plan.typical.max_batch_size}"
    if plan.max_batch_size == 0:
        return "batch 1 does not fit" + typical
    row = next((r for r in plan.rows if r.batch_size == plan.max_batch_size), None)
    if row is None:
        return f"max batch {plan.max_batch_size}" + typical
    free = req.gpu.usable_mib - row.device_used_bytes / MIB
    return f"max batch {plan.max_batch_size} ({free:,.0f} MiB left of {req.gpu.usable_mib:,} usable)" + typical
