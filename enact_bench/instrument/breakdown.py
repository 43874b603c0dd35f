"""Where the memory goes at the peak of a training step: by category, by top-level module, and
the phase the peak falls in. Works with real tensors and under FakeTensorMode.

`StepAttribution` rides along one measured step (`measure_train_step(..., breakdown=True)` or
`fake_train_step(..., breakdown=True)`, through instrument/tracked_step.StepInstruments): it swaps the step's `LiveTensorTracker` for one that records the ordered
alloc/free stream and tags every allocation with the phase and the module group running when it
was made. After the step the stream is replayed to the peak (the first event at which the live
bytes reach the tracker's peak) and every storage alive then is put in exactly one category, in
this order of precedence:

    parameters, buffers (the model's and the criterion's), gradients (`.grad`), optimizer_state
    (`optimizer.state` tensors), inputs (the batch's tensors), saved_for_backward (storages autograd
    saved in the forward, seen by SavedTensorCounter's pack hook), other_temporaries (the rest:
    activations not saved, backward buffers, optimizer-step temporaries).

Tensors alive before the step (parameters, the previous step's gradients, optimizer state, inputs)
are classified from a snapshot taken when the step starts; storages the step creates that end up
as gradients or optimizer state from a snapshot at its end. The category bytes sum to the peak.

Module groups (`GROUP_RULES`, matched on a module's path in the detector, by whole path
components; a module reached by several paths takes the first group of GROUP_PRECEDENCE):

    backbone      `backbone` (ResNet body, and the positional encoding inside the Joiner)
    input_proj    `input_proj`
    encoder       `transformer.encoder`; Anchor DETR's `transformer.encoder_layers(_level)`
    decoder       `transformer.decoder`; Anchor DETR's `transformer.decoder_layers`
    heads         `class_embed`, `bbox_embed` (also inside the transformer: Anchor DETR, the
                  two-stage `transformer.enc_out_*`; box refinement shares them with the decoder)
    loss          the criterion (matcher included)
    inputs        the batch's tensors
    optimizer     allocations made during gradient clipping and the optimizer step
    other         everything else: glue code in the detector's and transformer's own forward
                  (query embeddings, padding the image list, two-stage proposals, ...)

A model may give its own rules as `model.breakdown_rules` (same form): a source model (HF's, a
factory's; detectors/foreign.py) maps its paths, e.g. HF's `model.model.backbone`,
`model.model.encoder`, `model.model.decoder`, `model.class_labels_classifier`, to these groups.

Parameters, their gradients and optimizer state go to the group owning the parameter; an
activation to the group running when it was allocated: in the forward a stack kept by forward
pre/post hooks on the group modules; in the backward the group whose forward created the autograd
node being run (torch._C._current_autograd_node(), matched by sequence number against the
transitions the hooks recorded). The phase is forward (model and loss), backward, or optimizer.
"""
from __future__ import annotations

import bisect
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from enact_bench.metrics import MIB
from enact_bench.instrument.live_tensors import LiveTensorTracker

CATEGORIES = ("parameters", "buffers", "gradients", "optimizer_state", "inputs", "saved_for_backward",
              "other_temporaries")
MODULE_GROUPS = ("backbone", "input_proj", "encoder", "decoder", "heads", "loss", "inputs", "optimizer", "other")
PHASES = ("before", "forward", "backward", "optimizer")
GROUP_RULES = (
    ("backbone", "backbone"),
    ("input_proj", "input_proj"),
    ("transformer.encoder", "encoder"),
    ("transformer.encoder_layers", "encoder"),
    ("transformer.encoder_layers_level", "encoder"),
    ("transformer.decoder", "decoder"),
    ("transformer.decoder_layers", "decoder"),
    ("class_embed", "heads"),
    ("bbox_embed", "heads"),
    ("transformer.class_embed", "heads"),
    ("transformer.bbox_embed", "heads"),
    ("transformer.enc_out_class_embed", "heads"),
    ("transformer.enc_out_bbox_embed", "heads"),
)
GROUP_PRECEDENCE = ("heads", "input_proj", "backbone", "encoder", "decoder")
_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _rule_group(path: str, rules=GROUP_RULES) -> str | None:
    """Group of the longest rule prefix that `path` starts with (whole components), else None."""
    best, best_len = None, -1
    for prefix, group in rules:
        if (path == prefix or path.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = group, len(prefix)
    return best


def _pick(groups: set[str]) -> str:
    for g in GROUP_PRECEDENCE:
        if g in groups:
            return g
    return "other"


def parameter_groups(model: nn.Module, rules=GROUP_RULES) -> dict[int, str]:
    """id(parameter or buffer) -> module group, over every path that reaches it."""
    found: dict[int, set[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        g = _rule_group(name, rules)
        found.setdefault(id(t), set()).add(g if g is not None else "other")
    return {k: _pick(v) for k, v in found.items()}


def hooked_modules(model: nn.Module, rules=GROUP_RULES) -> list[tuple[nn.Module, str]]:
    """(module, group) for every module whose path is exactly a rule's prefix (children of
    ModuleList/ModuleDict containers instead of the container, which is never called)."""
    exact: dict[int, tuple[nn.Module, set[str]]] = {}
    for path, mod in model.named_modules(remove_duplicate=False):
        for prefix, group in rules:
            if path == prefix:
                stack = [mod]
                while stack:
                    m = stack.pop()
                    if isinstance(m, _CONTAINERS):
                        stack.extend(m.children())
                    else:
                        exact.setdefault(id(m), (m, set()))[1].add(group)
    return [(m, _pick(gs)) for m, gs in exact.values()]


@dataclass(frozen=True)
class PeakBreakdown:
    """What was alive at the peak of one training step (bytes exact; MiB = 2^20 bytes)."""

    peak_bytes: int
    phase: str  # forward | backward | optimizer (before: the peak is what was alive at the start)
    categories_bytes: dict[str, int] = field(repr=False)
    modules_bytes: dict[str, int] = field(repr=False)
    peak_event_index: int = 0
    fake: bool = False

    def __post_init__(self):
        if self.phase not in PHASES:
            raise ValueError(f"PeakBreakdown.phase must be one of {PHASES}, got {self.phase!r}")
        if tuple(self.categories_bytes) != CATEGORIES:
            raise ValueError(f"PeakBreakdown.categories_bytes must have the keys {CATEGORIES} in order, "
                             f"got {tuple(self.categories_bytes)}")
        if tuple(self.modules_bytes) != MODULE_GROUPS:
            raise ValueError(f"PeakBreakdown.modules_bytes must have the keys {MODULE_GROUPS} in order, "
                             f"got {tuple(self.modules_bytes)}")
        for what, d in (("categories_bytes", self.categories_bytes), ("modules_bytes", self.modules_bytes)):
            if any(v < 0 for v in d.values()) or sum(d.values()) != self.peak_bytes:
                raise ValueError(f"PeakBreakdown.{what} must be non-negative and sum to peak_bytes "
                                 f"({self.peak_bytes}), got {sum(d.values())}")

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    def as_dict(self) -> dict[str, float]:
        """Bytes by category in MiB (3 decimals), the `breakdown_mib` of plan's rows."""
        return {k: round(v / MIB, 3) for k, v in self.categories_bytes.items()}

    def modules_mib(self) -> dict[str, float]:
        return {k: round(v / MIB, 3) for k, v in self.modules_bytes.items()}

    def summary(self) -> dict:
        return {"peak_mib": round(self.peak_mib, 3), "phase": self.phase, "categories_mib": self.as_dict(),
                "modules_mib": self.modules_mib()}


class _TaggingTracker(LiveTensorTracker):
    def __init__(self, owner: "StepAttribution", host=None):
        super().__init__(count_existing=False, record_events=True, host=host)
        self._owner = owner
        self.tags: list[str | None] = []  # per event: the module group (None for frees)
        self.phases: list[str] = []
        self.alloc_index: dict[int, int] = {}  # key -> index of the alloc event of its live storage

    def _record(self, kind, key, nbytes):
        o = self._owner
        self.phases.append(o.phase)
        if kind == "alloc":
            self.alloc_index[key] = len(self.events)
            self.tags.append(o._current_group())
        else:
            self.tags.append(None)
        super()._record(kind, key, nbytes)


class StepAttribution:
    """Attribute the peak of one training step (see the module docstring). Use through
    `measure_train_step(..., breakdown=True)` (or the fake step's), which builds it."""

    def __init__(self, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch,
                 rules=GROUP_RULES, fake: bool = False, host=None):
        self.model, self.criterion, self.optimizer, self.batch = model, criterion, optimizer, batch
        # a model may name its own groups (a source model's HF paths: detectors/foreign.py)
        rules = getattr(model, "breakdown_rules", None) or rules
        self.rules, self.fake = rules, fake
        self.phase = "before"
        self._stack: list[str] = ["other"]
        self._trans_seq: list[int] = []
        self._trans_group: list[str] = []
        self._saved: set[int] = set()
        self._start_cats: dict[int, str] = {}
        self._start_mods: dict[int, str] = {}
        self._last_seq = -1
        self.tracker = _TaggingTracker(self, host)  # host: see cpu_memory.ObservingFakeTensorMode
        self._param_group = parameter_groups(model, rules)
        for b in criterion.buffers():
            self._param_group[id(b)] = "loss"

    # --- during the step ------------------------------------------------------------------
    def _current_group(self) -> str | None:
        if self.phase == "forward":
            return self._stack[-1]
        if self.phase == "backward":
            node = torch._C._current_autograd_node()
            if node is None or not self._trans_seq:
                return "other"
            seq = node._sequence_nr()
            if seq > self._last_seq:  # AccumulateGrad and nodes made after the forward
                return "other"
            i = bisect.bisect_right(self._trans_seq, seq) - 1
            return self._trans_group[i] if i >= 0 else "other"
        if self.phase == "optimizer":
            return "optimizer"
        return None

    def _transition(self) -> None:
        self._trans_seq.append(torch._C._autograd._get_sequence_nr())
        self._trans_group.append(self._stack[-1])

    def note_saved(self, key: int) -> None:
        """SavedTensorCounter's on_save: the live storage `key` was saved for backward."""
        idx = self.tracker.alloc_index.get(key)
        if idx is not None and key in self.tracker._live:
            self._saved.add(idx)

    def _categorised(self) -> list[tuple[str, str, list[torch.Tensor]]]:
        """(category, group or None: by owning parameter, tensors) in order of precedence."""
        model, opt = self.model, self.optimizer
        params = [p for p in model.parameters()]
        out = [("parameters", None, params),
               ("buffers", None, list(model.buffers()) + list(self.criterion.buffers())),
               ("gradients", None, [(p, p.grad) for p in params if p.grad is not None])]
        state = []
        for p, st in opt.state.items():
            state += [(p, v) for v in st.values() if isinstance(v, torch.Tensor)]
        out.append(("optimizer_state", None, state))
        out.append(("inputs", "inputs", self.batch.tensors()))
        return out

    def _snapshot(self, cats: dict[int, str], mods: dict[int, str]) -> None:
        """Classify the live allocations of the tensors named by _categorised (first wins)."""
        tr = self.tracker
        for cat, group, items in self._categorised():
            for item in items:
                owner, t = item if isinstance(item, tuple) else (item, item)
                if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                    continue
                key = id(t.untyped_storage())
                if key not in tr._live:
                    continue
                idx = tr.alloc_index[key]
                if idx in cats:
                    continue
                cats[idx] = cat
                if group is not None:
                    mods[idx] = group
                else:
                    mods[idx] = self._param_group.get(id(owner), "other" if cat != "buffers" else "loss")

    def begin(self) -> None:
        """Call once the tensors alive before the step are counted in: snapshot their categories."""
        self._snapshot(self._start_cats, self._start_mods)

    @contextmanager
    def forward(self, inner):
        self.phase = "forward"
        handles = []

        def pre(group):
            def hook(mod, args):
                self._stack.append(group)
                self._transition()
            return hook

        def post(mod, args, out):
            self._stack.pop()
            self._transition()

        for mod, group in hooked_modules(self.model, self.rules) + [(self.criterion, "loss")]:
            handles.append(mod.register_forward_pre_hook(pre(group)))
            handles.append(mod.register_forward_hook(post))
        self._transition()
        try:
            with inner():
                yield
        finally:
            for h in handles:
                h.remove()
            self._last_seq = torch._C._autograd._get_sequence_nr()

    @contextmanager
    def backward(self, inner):
        self.phase = "backward"
        try:
            with inner():
                yield
        finally:
            self.phase = "optimizer"

    # --- after the step -------------------------------------------------------------------
    def event_classes(self) -> tuple[dict[int, str], dict[int, str], list[str]]:
        """Per alloc event index its category and module group, and per event its phase: what
        `result` attributes the peak by (also applied to a stream synthesized from this one,
        predict/stream_fit.py). Call after the step."""
        tr = self.tracker
        end_cats: dict[int, str] = {}
        end_mods: dict[int, str] = {}
        self._snapshot(end_cats, end_mods)
        cats: dict[int, str] = {}
        mods: dict[int, str] = {}
        for idx, (kind, _, _) in enumerate(tr.events):
            if kind != "alloc":
                continue
            if idx in self._start_cats:
                cats[idx], mods[idx] = self._start_cats[idx], self._start_mods[idx]
            elif idx in end_cats:
                cats[idx], mods[idx] = end_cats[idx], end_mods[idx]
            else:
                cats[idx] = "saved_for_backward" if idx in self._saved else "other_temporaries"
                mods[idx] = tr.tags[idx] or "other"
        return cats, mods, list(tr.phases)

    def result(self) -> PeakBreakdown:
        tr = self.tracker
        cats, mods, phases = self.event_classes()
        out = breakdown_of_stream(tr.events, cats, mods, phases, fake=self.fake)
        if out.peak_bytes != tr.peak_bytes:
            raise AssertionError(f"breakdown: the event stream peaks at {out.peak_bytes} B, the tracker at {tr.peak_bytes} B")
        return out


def breakdown_of_stream(events, cats: dict[int, str], mods: dict[int, str], phases: list[str],
                        fake: bool = False) -> PeakBreakdown:
    """The peak of an ordered ("alloc" | "free", key, nbytes) stream, attributed by the category
    and module group of each alloc event (by index) and the phase of the peak's event."""
    cur = peak = 0
    peak_i = -1
    for i, (kind, _, nbytes) in enumerate(events):
        cur += nbytes if kind == "alloc" else -nbytes
        if cur > peak:
            peak, peak_i = cur, i
    live: dict[int, tuple[int, int]] = {}  # key -> (alloc index, bytes)
    for i in range(peak_i + 1):
        kind, key, nbytes = events[i]
        if kind == "alloc":
            live[key] = (i, nbytes)
        else:
            live.pop(key, None)
    by_cat = {c: 0 for c in CATEGORIES}
    by_mod = {g: 0 for g in MODULE_GROUPS}
    for idx, nbytes in live.values():
        by_cat[cats[idx]] += nbytes
        by_mod[mods[idx]] += nbytes
    phase = phases[peak_i] if peak_i >= 0 else "before"
    return PeakBreakdown(peak_bytes=peak, phase=phase, categories_bytes=by_cat, modules_bytes=by_mod,
                         peak_event_index=max(peak_i, 0), fake=fake)
