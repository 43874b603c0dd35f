"""The search for one variant's largest batch: `VariantSearch`.

Its steps, each public: `row(b)` (a fake training step at batch b, or the confirmed stream's
synthesis at b, replayed through the allocator model on the request's GPU: predict/device_memory.py),
`fit_stream()` (fake runs at AFFINE_PROBES, the stream fitted through them, kept only when it
reproduces the fake run at AFFINE_CONFIRM event by event: predict/stream_fit.py),
`fill_breakdown()` (the peak's breakdown for rows run without the hooks) and `search()` (the
secant search over batch sizes). It holds the search's state; the fake runs are its trainer's
(predict/fake_step.FakeTrainer), which the caller may pass in already built and primed.
"""
from __future__ import annotations

import time

from enact_bench.predict.device_memory import device_memory
from enact_bench.predict.progress import report
from enact_bench.predict.plan import (LINEAR_TOLERANCE, MAX_SEARCH_STEPS, PlanRequest, PlanRow, VariantSpec)


def factory_for(detector: str, spec: VariantSpec):
    """The variant's model factory (called on the meta device by the FakeTrainer)."""
    from enact_bench.detectors import build_variant

    return lambda: build_variant(detector, cluster_size=spec.enact_cluster_size, overrides=spec.overrides)


def _breakdown(b) -> tuple[dict | None, dict | None, str | None]:
    """A PeakBreakdown (instrument/breakdown.py) as: by category, by top-level module, phase."""
    if b is None:
        return None, None, None
    return b.as_dict(), b.modules_mib(), b.phase


AFFINE_PROBES = (2, 3)  # fake runs the stream is fitted through (predict/stream_fit.fit_shapes)
AFFINE_CONFIRM = 4  # and the fake run it must reproduce exactly before any row comes from it
AFFINE_FALLBACK = 5  # where it does not: `fit`'s quadratic through 2, 3, 4, confirmed at 5
AFFINE_ORIGIN = 3  # the probe whose per-event breakdown classes the synthesized streams inherit


def trainer_for(req: PlanRequest, spec: VariantSpec):
    """The variant's FakeTrainer: its model built once (meta device, then fake tensors)."""
    import torch

    from enact_bench.predict.cuda_policy import CudaArch
    from enact_bench.predict.fake_step import FakeTrainer

    torch.manual_seed(0)
    return FakeTrainer(factory_for(req.detector, spec), target=req.target, image_size=req.image_size,
                       arch=CudaArch(*req.gpu.compute_capability),
                       autocast_dtype=None if req.dtype == "float32" else req.dtype, ddp=req.ddp)


class VariantSearch:
    """One variant's rows: its fake runs, the stream fitted through them, and the search. `trainer` and `measures` (batch -> StepMeasure of fake runs already
    made, e.g. the probes run beside the other variants') may come from the caller."""

    def __init__(self, req: PlanRequest, spec: VariantSpec, trainer=None, measures: dict | None = None,
                 breakdown: bool = True, replays: dict | None = None, tag: str = ""):
        self.req, self.spec = req, spec
        self._trainer = trainer
        self.breakdown = breakdown  # False: rows without the peak's breakdown (no hooks run for them)
        # allocator replays shared between searches of the same streams on other GPUs: (tag, batch,
        # the GPU's library workspaces) -> (AllocatorStats, tensor peak); `tag` names the stream
        self.replays, self.tag = replays, tag
        self.rows: dict[int, PlanRow] = {}
        self.measures: dict = {}  # batch -> StepMeasure of a fake run (rows and probes)
        self.fixed_bytes: int | None = None
        self.ddp_bucket_bytes: int | None = None
        self.stream = None  # the confirmed AffineStream, when the probes confirm one
        self.affine_note: str | None = None  # why there is none
        self.pair_note: str | None = None  # fit_pair's refusal, where it refused
        for b in sorted(measures or {}):
            self._keep(b, measures[b])

    @property
    def trainer(self):
        if self._trainer is None:  # built when a fake run is first needed here
            self._trainer = trainer_for(self.req, self.spec)
        return self._trainer

    def _keep(self, b: int, m) -> None:
        self.measures[b] = m
        if self.fixed_bytes is None:  # parameters, buffers, gradients, AdamW state (+ DDP buckets)
            self.fixed_bytes = m.start_bytes - m.input_bytes
            self.ddp_bucket_bytes = m.ddp_bucket_bytes

    def _fake(self, b: int, breakdown: bool):
        m = self.measures.get(b)
        if m is None or (breakdown and m.breakdown is None):
            hw = self.req.hw(b)
            report(f"{self.req.detector} {self.spec.variant}: fake training step at batch {b}, {hw[0]}x{hw[1]}")
            m = self.trainer.step(b, record_events=True, breakdown=breakdown, image_size=hw)
            self._keep(b, m)
        return m

    def fit_stream(self) -> None:
        """Probe fake runs at AFFINE_PROBES, fit the stream through them (shapes affine in the
        batch) and keep it when its synthesis at AFFINE_CONFIRM equals that fake run event by
        event. Where it does not, one more fake run at AFFINE_FALLBACK and `fit`'s quadratic
        through the three earlier ones, kept only if it reproduces that run exactly."""
        from enact_bench.predict.stream_fit import NotAffine, fit, fit_shapes

        if self.stream is not None:  # fitted already (fit_pair)
            return
        if not self.req.affine:
            self.affine_note = "every row a fake run (--fake-runs)"
            return
        ms = [self._fake(b, breakdown=(b == AFFINE_ORIGIN and self.breakdown)) for b in AFFINE_PROBES]
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
        from enact_bench.predict.stream_fit import NotAffine

        if len({repr(sorted(m.sdpa_kernels.items())) for m in ms}) != 1:
            raise NotAffine("the SDPA kernels chosen change with the batch size")

    def _replay_key(self, b: int):
        from enact_bench.predict.gpus import library_workspace_bytes

        if self.replays is None:
            return None
        return self.tag, b, self.req.hw(b), tuple(library_workspace_bytes(self.req.gpu))

    def _synthesized(self, b: int):
        """The stream's events at batch b (kept in `replays` for GPUs with other workspaces)."""
        key = ("events", self.tag, b, self.req.hw(b))
        if self.replays is None:
            return self.stream.synthesize(b)[0]
        if key not in self.replays:
            self.replays[key] = self.stream.synthesize(b)[0]
        return self.replays[key]

    def _row_from(self, b: int, events, peak_bytes: int | None, seconds: float, source: str, breakdown, kernels) -> PlanRow:
        from enact_bench.predict.gpus import device_used_bytes

        key = self._replay_key(b)
        if key is not None and key in self.replays:
            stats, peak = self.replays[key]
        else:
            if callable(events):
                events = events()
            stats = device_memory(events, self.req.gpu).stats
            peak = stats.requested_peak_bytes - stats.preallocated_bytes  # the tracker's peak
            if key is not None:
                self.replays[key] = (stats, peak)
        device = device_used_bytes(stats, self.req.gpu)
        cats, mods, phase = _breakdown(breakdown)
        return PlanRow(b, peak if peak_bytes is None else peak_bytes, stats.alloc_peak_bytes, stats.reserved_peak_bytes,
                       device, device <= self.req.budget_bytes, seconds, cats, dict(kernels), mods, phase, source,
                       image_size=self.req.hw(b))

    def row(self, b: int, breakdown: bool | None = None) -> PlanRow:
        """The row at batch b; breakdown=False (default: the search's `breakdown`): a row from the
        stream without the peak's breakdown (a later call with breakdown adds it)."""
        breakdown = self.breakdown if breakdown is None else breakdown
        if b in self.rows:
            r = self.rows[b]
            if breakdown and r.breakdown_mib is None and r.source == "affine":
                events, origin = self.stream.synthesize(b)
                r.breakdown_mib, r.modules_mib, r.peak_phase = _breakdown(self._stream_breakdown(events, origin))
            return r
        t0 = time.perf_counter()
        if self.stream is not None and b >= self.stream.base_batch and b not in self.measures:
            kernels = self.measures[self.stream.base_batch].sdpa_kernels  # the same at every probe (_same_kernels)
            if not breakdown:  # the tracker's peak is the replay's requested peak less the workspaces
                self.rows[b] = self._row_from(b, lambda: self._synthesized(b), None, time.perf_counter() - t0,
                                              "affine", None, kernels)
                return self.rows[b]
            events, origin = self.stream.synthesize(b)
            bd = self._stream_breakdown(events, origin)
            self.rows[b] = self._row_from(b, events, bd.peak_bytes, time.perf_counter() - t0, "affine", bd, kernels)
        else:
            # the first row of a search (batch 2, a probe of the affine stream) runs without the
            # breakdown's hooks; `fit_stream` adds it from the stream (or a second fake run)
            lazy = self.req.affine and b == AFFINE_PROBES[0] and (self.stream is not None or self.affine_note is None)
            ran_before = b in self.measures  # a probe: its fake run's time counts here
            m = self._fake(b, breakdown=breakdown and not lazy)
            seconds = time.perf_counter() - t0 + (m.seconds if ran_before else 0.0)
            self.rows[b] = self._row_from(b, m.events, m.peak_bytes, seconds, "fake", m.breakdown, m.sdpa_kernels)
        return self.rows[b]

    def fill_breakdown(self) -> None:
        """Rows of fake runs without a breakdown (the lazy batch-2 row): from the confirmed stream,
        whose synthesis at that batch is checked to be the fake run's stream, else a second run."""
        from enact_bench.predict.stream_fit import canonical

        if not self.breakdown:
            return
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
        from enact_bench.instrument.breakdown import breakdown_of_stream

        cats, mods, phases = self.measures[AFFINE_ORIGIN].event_classes
        return breakdown_of_stream(events, {i: cats[o] for i, o in enumerate(origin) if events[i][0] == "alloc"},
                                   {i: mods[o] for i, o in enumerate(origin) if events[i][0] == "alloc"},
                                   [phases[o] for o in origin], fake=True)

    def search(self, slope_hint: int | None = None) -> tuple[int, bool | None]:
        """Largest fitting batch size (0 if batch 1 does not fit) and whether the peak was linear.

        One probe at batch 2: its tensor peak less what does not grow with the batch (parameters,
        buffers, gradients, AdamW state) is the batch's share, so the slope is that share / 2. The
        first guess is the largest batch that slope allows; later guesses follow the secant through
        batch 2 and the last fake run's device memory (the allocator's rounding makes device memory
        only nearly linear). Ends when a fitting batch and the next one, which does not fit, have
        both been seen. `linear`: every far fake run's tensor peak lies within LINEAR_TOLERANCE of
        the line through batch 2 with the first far run's slope (needs two far runs). slope_hint:
        device bytes per image from another GPU's search of the same streams, for the first guess."""
        r2 = self.row(2)
        if not r2.fits:
            self.affine_note = "batch 2 does not fit: no affine stream needed"
            self.row(1)
            self.fill_breakdown()
            return (1 if self.rows[1].fits else 0), None
        self.fit_stream()  # from here on, rows come from the confirmed affine stream where there is one
        self.fill_breakdown()
        budget = self.req.budget_bytes
        fixed = self.fixed_bytes
        slope = max(slope_hint or (r2.tensor_peak_bytes - fixed) // 2, 1)
        lo, hi = 2, None  # largest batch known to fit, smallest known not to
        for _ in range(MAX_SEARCH_STEPS):
            guess = 2 + (budget - r2.device_used_bytes) // slope
            guess = max(guess, lo + 1) if hi is None else min(max(guess, lo + 1), hi - 1)
            if hi is not None and guess <= lo:
                break
            r = self.row(guess)
            if r.fits:
                lo = max(lo, guess)
            else:
                hi = guess if hi is None else min(hi, guess)
            if hi is not None and hi == lo + 1:
                break
            slope = max((r.device_used_bytes - r2.device_used_bytes) // (guess - 2), 1)
            if r.fits and (hi is None or guess + 1 < hi):  # the line says this is the last fitting batch
                nxt = self.row(guess + 1)
                if not nxt.fits:
                    hi = guess + 1
                    break
                lo = guess + 1
        else:
            raise RuntimeError(f"batch-size search did not settle in {MAX_SEARCH_STEPS} fake runs")
        far = sorted(b for b in self.rows if b > 2)
        linear = None
        if len(far) >= 2:
            b0 = far[0]
            t_slope = (self.rows[b0].tensor_peak_bytes - r2.tensor_peak_bytes) / (b0 - 2)
            linear = all(abs(self.rows[b].tensor_peak_bytes - (r2.tensor_peak_bytes + t_slope * (b - 2)))
                         <= LINEAR_TOLERANCE * self.rows[b].tensor_peak_bytes for b in far)
        return lo, linear


def probe_plan(req: PlanRequest) -> dict[int, tuple[str, ...]]:
    """The fake runs a search starts with: batch -> the sizes run there ("main": the request's;
    "typical": the typical batch beside a run-worst plan). Fixed size: AFFINE_PROBES and
    AFFINE_CONFIRM. Run-worst: both sizes at the first probe, the request's at the second, the
    typical one at AFFINE_CONFIRM (`fit_pair`). None for batch sizes given or --fake-runs."""
    if req.batch_sizes or not req.affine:
        return {}
    if req.typical() is None:
        return {b: ("main",) for b in AFFINE_PROBES + (AFFINE_CONFIRM,)}
    return {AFFINE_PROBES[0]: ("main", "typical"), AFFINE_PROBES[1]: ("main",), AFFINE_CONFIRM: ("typical",)}


def fit_pair(main: VariantSearch, typical: VariantSearch) -> None:
    """A run-worst plan's two streams from four fake runs instead of six: the request's size at
    AFFINE_PROBES fitted (stream_fit.fit_shapes), carried to the typical size with the fake run
    there at the first probe (predict/stream_resize.py), and that stream confirmed by the typical
    size's fake run at AFFINE_CONFIRM, event by event. Both sizes then share one template,
    confirmed once. Where any step refuses, nothing is set and each search fits its own stream
    (`fit_stream`: its own probes and confirmation), as a fixed-size plan does."""
    from enact_bench.predict.stream_fit import AffineStream, NotAffine, fit_shapes
    from enact_bench.predict.stream_resize import at_image_size

    if not main.req.affine:
        return
    ms = [main._fake(b, breakdown=(b == AFFINE_ORIGIN and main.breakdown)) for b in AFFINE_PROBES]
    try:
        main._same_kernels(ms)
        stream = fit_shapes(AFFINE_PROBES[0], [(m.events, m.event_ops, m.event_shapes) for m in ms])
        first = typical._fake(AFFINE_PROBES[0], breakdown=False)
        check = typical._fake(AFFINE_CONFIRM, breakdown=False)
        typical._same_kernels([first, check])
        carried = at_image_size(stream, first.events, first.event_shapes).confirm(AFFINE_CONFIRM, check.events)
    except NotAffine as e:
        main.pair_note = typical.pair_note = f"one template for both sizes refused ({e}); each size fitted on its own"
        return
    hw = typical.req.hw(AFFINE_CONFIRM)
    main.stream = AffineStream(stream.base_batch, stream.template, AFFINE_CONFIRM)
    typical.stream = carried
    main.affine_note = (f"one template for this size and the typical {hw[0]}x{hw[1]}, fitted through batch "
                        f"{AFFINE_PROBES[0]} and {AFFINE_PROBES[1]} here, confirmed by the typical size's fake run "
                        f"at {AFFINE_CONFIRM}")
    typical.affine_note = (f"the run-worst stream's template carried to this size with its fake run at "
                           f"{AFFINE_PROBES[0]}, confirmed by its fake run at {AFFINE_CONFIRM}")
