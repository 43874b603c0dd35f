"""Exact peak of live tensor storage bytes, for CPU runs (and fake tensors).

`LiveTensorTracker` is a TorchDispatchMode: every storage that an op produces is counted from
the moment it first appears until its Python object is freed (a weakref finalizer). Storages
already alive when tracking starts (parameters, gradients, optimizer state, inputs) are found
with the garbage collector and counted in, so the peak means what `max_memory_allocated` means
on CUDA: every live tensor at the peak. Unlike RSS it is exact and deterministic. `host_ops`
(empty by default; the estimate's CUDA target sets it, predict/host_tensors.py) names ops whose
outputs are host memory on a GPU: their storages, and views of them, are not counted.

Storages that no Python object reaches when tracking starts (the garbage collector cannot find
them) but that an op writes into during the block were alive all along: DistributedDataParallel's
gradient buckets are the case in point (the C++ reducer allocates one flat tensor per bucket and
copies each gradient into it with `mul_out`, then all-reduces it in place). The CUDA allocator
counts them from their allocation; the tracker counts them in from the start of the block when the
first write into them shows them (`late_bytes`), raising the peak by their size, so it agrees with
`max_memory_allocated` there too.

With `record_events=True` the tracker also keeps the ordered stream of what it counted, as
("alloc", key, nbytes) and ("free", key, nbytes) tuples in `events` (key: the storage's id(), which
Python may reuse once the storage is freed). The storages counted in at the start come first, as
allocs, in the order they were found. A storage resized in place is a free of its old size then an
alloc of its new one. `enact_bench.predict.allocator.replay` runs such a stream through a model
of the CUDA caching allocator. Recording stops at the end of the `with` block. A storage counted
in late (above) has its alloc event where it was found, not at the start.
"""
from __future__ import annotations

import gc
import warnings
import weakref

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from enact_bench.metrics import MIB



def _shape_of(t: torch.Tensor, nbytes: int) -> tuple[tuple[int, ...], int] | None:
    """(shape, element size) of `t` when it spans its storage's `nbytes`, else None (a view)."""
    size = t.element_size()
    return (tuple(t.shape), size) if t.numel() * size == nbytes else None


def _storage_nbytes(t: torch.Tensor) -> tuple[object, int] | None:
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        return None
    try:
        st = t.untyped_storage()
    except (NotImplementedError, RuntimeError):  # tensor subclasses without storage
        return None
    return st, st.nbytes()


class LiveTensorTracker(TorchDispatchMode):
    """Track the peak of live tensor bytes inside a `with` block.

    Attributes after the block: `start_bytes` (live when it began), `peak_bytes`,
    `end_bytes`, and `peak_mib`. `reset_peak()` restarts the peak at the current level,
    like `torch.cuda.reset_peak_memory_stats`.
    """

    def __init__(self, count_existing: bool = True, record_events: bool = False, host=None):
        super().__init__()
        self.count_existing = count_existing
        # host: an ObservingFakeTensorMode that shows this tracker its ops (below), instead of the
        # tracker being a dispatch mode of its own
        self._host = host
        self._attached = False
        self.events: list[tuple[str, int, int]] | None = [] if record_events else None
        self._recording = record_events
        self._live: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.start_bytes = 0
        self.end_bytes = 0
        self.late_bytes = 0  # storages first seen as the destination of a write (see module doc)
        # with record_events: per event, the op being dispatched when it was recorded (None outside
        # any op, e.g. the storages counted in at the start); predict/stream_fit.py aligns streams by it
        self.event_ops: list | None = [] if record_events else None
        # with record_events: per alloc event the storage's tensor as (shape, element size) when it
        # spans the whole storage (else None; None for frees): predict/stream_fit.py fits each
        # dimension of a shape, where a storage's bytes alone would be a quadratic in the batch
        self.event_shapes: list | None = [] if record_events else None
        self._op = None
        self._meta = None  # (shape, element size) of the tensor being counted, for _record
        # ops whose outputs live on the host when the step stands for a GPU's (set by the estimate's
        # CUDA target: aten.lift_fresh, a tensor built from Python data): their storages, and every
        # view of them, are not counted
        self.host_ops: frozenset = frozenset()
        self._host_storages: set[int] = set()

    # --- bookkeeping -------------------------------------------------------------------
    def _track(self, t: torch.Tensor) -> None:
        found = _storage_nbytes(t)
        if found is None:
            return
        st, nbytes = found
        key = id(st)
        if key in self._host_storages:
            return
        if self._recording:
            self._meta = _shape_of(t, nbytes)
        if key in self._live:
            if nbytes != self._live[key]:  # resized in place (resize_, set_)
                if self._recording:
                    self._record("free", key, self._live[key])
                    self._record("alloc", key, nbytes)
                self.current_bytes += nbytes - self._live[key]
                self._live[key] = nbytes
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            return
        self._live[key] = nbytes
        self.current_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        if self._recording:
            self._record("alloc", key, nbytes)
        weakref.finalize(st, self._free, key)

    def _free(self, key: int) -> None:
        nbytes = self._live.pop(key, None)
        if nbytes is not None:
            self.current_bytes -= nbytes
            if self._recording:
                self._record("free", key, nbytes)

    def _record(self, kind: str, key: int, nbytes: int) -> None:
        """Append one event (subclasses may tag it too)."""
        self.events.append((kind, key, nbytes))
        self.event_ops.append(self._op)
        self.event_shapes.append(self._meta if kind == "alloc" else None)

    def _track_late(self, t: torch.Tensor) -> None:
        """`t` is written in place but was never seen: it was alive since before the block (a
        storage no Python object reached at the start), so it counts from the start."""
        found = _storage_nbytes(t)
        if found is None or id(found[0]) in self._live:
            return
        st, nbytes = found
        if id(st) in self._host_storages:
            return
        if self._recording:
            self._meta = _shape_of(t, nbytes)
        self._live[id(st)] = nbytes
        self.current_bytes += nbytes
        self.start_bytes += nbytes
        self.peak_bytes += nbytes  # alive at every earlier moment, so at the earlier peak too
        self.late_bytes += nbytes
        if self._recording:
            self._record("alloc", id(st), nbytes)
        weakref.finalize(st, self._free, id(st))

    def _mark_host(self, out) -> None:
        for t in ((out,) if isinstance(out, torch.Tensor) else tree_leaves(out)):
            found = _storage_nbytes(t) if isinstance(t, torch.Tensor) else None
            if found is not None and id(found[0]) not in self._live:
                key = id(found[0])
                self._host_storages.add(key)
                weakref.finalize(found[0], self._host_storages.discard, key)

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MIB

    # --- mode ----------------------------------------------------------------------------
    def __enter__(self):
        if self.count_existing:
            gc.collect()
            with warnings.catch_warnings():  # isinstance() on deprecated module proxies warns
                warnings.simplefilter("ignore")
                for obj in gc.get_objects():
                    if isinstance(obj, torch.Tensor):
                        self._track(obj)
        self.start_bytes = self.current_bytes
        self.peak_bytes = self.current_bytes
        if self._host is not None:
            if self._host.observer is not None:
                raise RuntimeError("an ObservingFakeTensorMode shows its ops to one tracker at a time")
            self._host.observer = self
            self._attached = True
            return self
        return super().__enter__()

    def __exit__(self, *exc):
        if self._attached:
            self._host.observer = None
            self._attached = False
            out = None
        else:
            out = super().__exit__(*exc)
        self.end_bytes = self.current_bytes
        self._recording = False
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS:  # a device / layout query (two in three calls under fake tensors)
            return func(*args, **kwargs)
        return self._observe(func, args, kwargs, lambda: func(*args, **kwargs))

    def _observe(self, func, args, kwargs, run):
        """Count what the op `func` (run by `run()`) writes into and the storages it creates."""
        written = written_args(func)
        for i, name, kwarg_only in written:  # in-place / out= ops: their destinations existed before
            value = kwargs.get(name) if (kwarg_only or i >= len(args)) else args[i]
            for t in ((value,) if isinstance(value, torch.Tensor) else tree_leaves(value)):
                if isinstance(t, torch.Tensor):
                    self._track_late(t)
        out = run()
        if func in self.host_ops:
            self._mark_host(out)
            return out
        if self._recording:
            self._op = func
        for t in ((out,) if isinstance(out, torch.Tensor) else tree_leaves(out)):
            if isinstance(t, torch.Tensor):
                self._track(t)
        if self._recording:
            self._op = None
        return out


class ObservingFakeTensorMode(FakeTensorMode):
    """A FakeTensorMode that shows each op it is asked to dispatch to the LiveTensorTracker made
    with `host=` this mode and entered under it. The tracker so sees every op once, inside the
    fake mode, where as a dispatch mode of its own above it each op would cross from C++ into
    Python a second time (13% of a warm fake DETR-R50 step, 0.79 -> 0.69 s). It sees what a mode
    directly above the fake mode sees: the ops that reach the fake mode from outside, not those the
    fake mode dispatches while running one (its decompositions: `_depth`). A test holds the
    streams of both ways equal event by event."""

    observer = None
    _depth = 0  # > 0 while an observed op runs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        observer = self.observer
        if observer is None or self._depth or func in _METADATA_OPS:
            return FakeTensorMode.__torch_dispatch__(self, func, types, args, kwargs)
        return observer._observe(func, args, kwargs or {}, lambda: self._inner(func, types, args, kwargs))

    def _inner(self, func, types, args, kwargs):
        self._depth += 1
        try:
            return FakeTensorMode.__torch_dispatch__(self, func, types, args, kwargs)
        finally:
            self._depth -= 1


# ops that return no tensor and create no storage: answered without the bookkeeping. Under fake
# tensors C++ asks every tensor's device through prim.device (FakeTensor has a Python device).
_METADATA_OPS = frozenset({torch.ops.prim.device.default, torch.ops.prim.layout.default})
_WRITTEN: dict = {}


def written_args(func) -> tuple:
    """(position, name, kwarg_only) of each argument `func` writes into (in place, out=), cached
    per op: reading the schema costs more than the rest of the bookkeeping."""
    found = _WRITTEN.get(func)
    if found is None:
        schema = func._schema
        found = tuple((i, a.name, a.kwarg_only) for i, a in enumerate(schema.arguments)
                      if schema.is_mutable and a.alias_info is not None and a.alias_info.is_write)
        _WRITTEN[func] = found
    return found
