"""Answers to a model's data-dependent code under FakeTensorMode, each one counted and listed.

Fake tensors carry shapes, not values, so code that reads a value (`bool(t)`, `t.item()`,
`t.tolist()`) or whose output's shape depends on values (`nonzero`, `masked_select`, `unique`)
cannot run on them. Models we did not write (HF transformers', a user's) have such code in their
training step; instead of copies of their code, `FakePolicy.applied(model)` answers it while a
fake step runs, and `FakePolicy.answers` counts every answer by what was assumed:

- **Values known from the batch.** Small tensors whose inputs are all known (built from shapes
  and constants: the pixel mask of an unpadded batch, RT-DETR's denoising masks, the matcher's
  indices) get a real "shadow" computed beside the fake one (`_Shadows`, at most SHADOW_LIMIT
  elements per op). Reads of them, and `nonzero` & co. over them, are exact.
- **Guards, answered as a valid batch answers them.** `isfinite(x).all()` -> True (DETR-family
  encoder layers clamp activations otherwise), `isnan(x).any()` / `isinf(x).any()` -> False,
  `(a >= b).all()` over unknown values -> True (the GIoU box-format asserts).
- **Data-dependent sizes of unknown values**, bounded above: `nonzero`, `masked_select`, `unique`
  and boolean-mask indexing (`x[mask]`, `x[mask] = v`) of an unknown mask count every element.
- **The Hungarian matcher**: any `scipy.optimize.linear_sum_assignment` a loaded module calls
  returns a fixed assignment (query i <-> target i, min(queries, targets) pairs: the real
  assignment's size), as the presets' FixedAssignmentMatcher does.
- **HF's tracing test**: transformers' `is_tracing(tensor)` is True for fake tensors, so HF would
  keep a 4-D padding mask that eager mode drops; answered as in eager mode (False).
- **`module.to()` inside the step** (D-FINE's loss): swapping a fake tensor with itself is skipped.
- **`torch.equal` of unknown values**: True for the same memory (the same storage, offset, shape
  and strides), False for tensors computed apart (D-FINE compares each decoder layer's corners
  with the last layer's).
- **HF's lru caches** of tensors (`compile_compatible_method_lru_cache`: position embeddings,
  anchors) are cleared when a fake step starts and ends: a cache filled under one fake mode fails
  under the next ("Mixing fake modes").

Anything else that reads a value of an unknown tensor fails with a message naming the op chain,
never a silent guess.
"""
from __future__ import annotations

import contextlib
import math
import sys
import weakref
from collections import Counter

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map_only

from enact_bench.instrument.live_tensors import written_args

aten = torch.ops.aten
# elements an op may output and still get a real shadow: 2^25 holds the pixel mask of 31 images of
# 800x1333 (int64: 256 MiB while it lives; only masks and small index tensors ever get one)
SHADOW_LIMIT = 1 << 25
# an uninitialised tensor gets a shadow (to be filled element by element, e.g. RT-DETR v2's spatial
# shapes) only when this small: autograd's and the optimizer's large empty buffers never need one
EMPTY_SHADOW_LIMIT = 1 << 12

# indexing ops whose (list of) indices may hold boolean masks: the kernel turns each into nonzero's indices
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
# ops whose output's shape depends on the input's values
_DYNAMIC = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
            aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
_NO_SHADOW = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
              aten.new_empty.default, aten.new_empty_strided.default}  # uninitialised memory
_COMPARE = {aten.ge.Tensor, aten.ge.Scalar, aten.gt.Tensor, aten.gt.Scalar, aten.le.Tensor, aten.le.Scalar,
            aten.lt.Tensor, aten.lt.Scalar}
_AND = {aten.mul.Tensor, aten.logical_and.default, aten.bitwise_and.Tensor}
_OR = {aten.logical_or.default, aten.bitwise_or.Tensor, aten.add.Tensor}
_OVERWRITE = {aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default, aten.copy_.default}
UNIFORM_FROM = 1 << 16  # outputs above this many elements get a uniform shadow where they can
# factories of one value: the index of their size argument
_FACTORY_SIZE = {aten.ones.default: 0, aten.zeros.default: 0, aten.full.default: 0, aten.new_ones.default: 1,
                 aten.new_zeros.default: 1, aten.new_full.default: 1}
_LIKE = {aten.ones_like.default, aten.zeros_like.default, aten.full_like.default}
# ops whose output holds the input's one value (cast to the output's dtype)
_VALUE_PRESERVING = {aten._to_copy.default, aten.clone.default, aten.upsample_nearest2d.default,
                     aten.upsample_nearest2d.vec, aten.upsample_bilinear2d.default, aten.upsample_bilinear2d.vec,
                     aten.upsample_nearest1d.default, aten.upsample_nearest3d.default}
_METADATA_OPS = frozenset({torch.ops.prim.device.default, torch.ops.prim.layout.default})
_ALL = {aten.all.default, aten.all.dim, aten.all.dims}
_ANY = {aten.any.default, aten.any.dim, aten.any.dims}
_UNIFORM_REDUCTIONS = _ALL | _ANY | {aten.amax.default, aten.amin.default}
_TAG_OPS = frozenset({aten.abs.default, aten.eq.Tensor, aten.ne.Tensor, aten.eq.Scalar, aten.ne.Scalar,
                      aten.isnan.default, aten.isinf.default, aten.isfinite.default} | _COMPARE | _AND | _OR
                     | _ALL | _ANY)

# what a reduction of a tagged boolean tensor answers when its value is read, and how it is listed
_GUARDS = {
    "all:isfinite": (True, "isfinite(x).all() guard: True (finite activations)"),
    "any:isnan": (False, "isnan(x).any() guard: False"),
    "any:isinf": (False, "isinf(x).any() guard: False"),
    "any:nonfinite": (False, "isnan/isinf(x).any() guard: False"),
    "all:compare": (True, "(a >= b).all() check over unknown values (e.g. GIoU's box-format assert): True"),
}


def is_fake(t) -> bool:
    return isinstance(t, FakeTensor)


class FakePolicy:
    """The answers of one fake step. `applied(model)` is a context manager entered inside the
    FakeTensorMode (its dispatch mode must see the ops before the fake mode does)."""

    def __init__(self):
        self.answers: Counter = Counter()

    def note(self, what: str) -> None:
        self.answers[what] += 1

    def summary(self) -> list[str]:
        """"isfinite(x).all() guard: True (finite activations) x6", ... in a stable order."""
        return [f"{what} x{n}" if n > 1 else what for what, n in sorted(self.answers.items())]

    @contextlib.contextmanager
    def applied(self, model):
        self.answers.clear()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_fixed_assignment(self))
            stack.enter_context(_hf_not_tracing(self))
            stack.enter_context(_swap_self_is_noop(self))
            stack.enter_context(_lru_caches_cleared(model))
            stack.enter_context(_Shadows(self))
            yield self


# --- the dispatch mode: shadows, tags and answers --------------------------------------------
class _Shadows(TorchDispatchMode):
    """Real values beside fake tensors where they are known.

    `shadow[t]` is a real tensor laid out as the fake `t` (a view of its base's shadow when `t` is a
    view, so writes through views reach the base). A storage whose elements are not all known (made
    by `empty`, or written with unknown values) has a boolean mask over its elements in `_known`;
    a tensor's value is known when every element it covers is."""

    def __init__(self, policy: FakePolicy):
        super().__init__()
        self.policy = policy
        self.shadow = _OnTensor(f"_enact_shadow_{id(self)}")  # fake tensor -> real tensor of its values
        self.tag = _OnTensor(f"_enact_tag_{id(self)}")  # fake bool tensor -> what it says ("isfinite", ...)
        self._known: dict[int, torch.Tensor] = {}  # storage id -> bool (elements,) where not all are known
        self.too_large = 0  # ops whose values were known but whose output exceeded SHADOW_LIMIT
        # storages with a uniform shadow (one value expanded, any size: the pixel mask of an unpadded
        # batch), and storages written after that (their uniform shadows are void)
        self._uniform: set[int] = set()
        self._void: set[int] = set()

    # values ---------------------------------------------------------------------------------
    def _raw(self, t):
        """The shadow of `t` (whether or not all of it is known); a real tensor is its own."""
        if not is_fake(t):
            return t
        if getattr(t, "constant", None) is not None:
            return t.constant
        return self.shadow.get(t)

    def _region(self, t):
        mask = self._known.get(id(t.untyped_storage()))
        if mask is None:
            return None
        with _disable_current_modes():
            if t.untyped_storage().nbytes() // t.element_size() != mask.numel():
                return mask[:0]  # viewed as another dtype: not tracked element by element
            return torch.as_strided(mask, tuple(t.shape), tuple(t.stride()), t.storage_offset())

    def _value(self, t):
        v = self._raw(t)
        if v is None or not is_fake(t):
            return v
        if self._void and id(t.untyped_storage()) in self._void:
            return None
        region = self._region(t)
        if region is not None:
            with _disable_current_modes():
                if region.numel() == 0 or not bool(region.all()):
                    return None
        return v

    def _mark(self, t, known: bool) -> None:
        """Record that the elements `t` covers are (un)known."""
        st = t.untyped_storage()
        key = id(st)
        with _disable_current_modes():
            if key not in self._known:
                if known:
                    return
                self._known[key] = torch.ones(st.nbytes() // max(t.element_size(), 1), dtype=torch.bool)
                weakref.finalize(st, self._known.pop, key, None)
            region = self._region(t)
            if region is None or region.numel() == 0:
                self._known[key].fill_(False)
            else:
                region.fill_(known)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            return self._read(args[0])
        if func in _DYNAMIC:
            return self._dynamic(func, args, kwargs)
        if func in _INDEXING and len(args) > 1 and any(_is_mask(i) for i in args[1]):
            return self._mask_index(func, args, kwargs)
        if func is aten.equal.default:
            values = [self._value(a) for a in args]
            if all(v is not None for v in values):
                self.policy.note("torch.equal of tensors known from the batch: exact")
                return self._real(func, values, {})
            a, b = args[0], args[1]
            same = a.untyped_storage() is b.untyped_storage() and (a.shape, a.stride(), a.storage_offset()) == (
                b.shape, b.stride(), b.storage_offset())
            # the same memory is equal; tensors computed apart are taken to differ, as real values do
            # (D-FINE's loss compares each layer's corners with the last layer's: equal only there)
            self.policy.note(f"torch.equal of unknown values: {same} ({'the same memory' if same else 'distinct tensors'})")
            return same
        out = func(*args, **kwargs)
        self._follow(func, args, kwargs, out)
        return out

    def _real(self, func, args, kwargs):
        with _disable_current_modes(), torch.no_grad():
            return func(*args, **kwargs)

    def _set_uniform(self, o, scalar: torch.Tensor) -> None:
        """A shadow of one value for every element of `o` (no memory of o's size)."""
        with _disable_current_modes():
            self.shadow[o] = scalar.reshape(()).to(o.dtype).expand(tuple(o.shape))
        st = o.untyped_storage()
        if id(st) not in self._uniform:
            self._uniform.add(id(st))
            weakref.finalize(st, self._uniform.discard, id(st))

    def _uniform_result(self, func, args, kwargs, tensors_in, flat_out) -> bool:
        """An op over inputs that are uniform (or one element) whose output is uniform too: factories
        filling one value, pointwise ops, value-preserving ones (casts, upsampling, copies) and
        all/any/amax/amin. Its value from one element; its shadow that value expanded."""
        if len(flat_out) != 1:
            return False
        values = [self._value(a) for a in tensors_in]
        if not all(v is not None and (v.numel() == 1 or _uniform(v)) for v in values):
            return False
        o = flat_out[0]
        with _disable_current_modes(), torch.no_grad():
            one = {id(a): _one(v) for a, v in zip(tensors_in, values)}
            small_args, small_kwargs = tree_map_only(torch.Tensor, lambda a: one[id(a)], (args, kwargs))
            if func in _FACTORY_SIZE:
                i = _FACTORY_SIZE[func]
                small_args = (*small_args[:i], [1] * len(small_args[i]), *small_args[i + 1:])
            elif func in _VALUE_PRESERVING:
                result = one[id(tensors_in[0])].to(o.dtype)
                self._set_uniform(o, result.reshape(-1)[0])
                return True
            elif not (torch.Tag.pointwise in func.tags or func in _UNIFORM_REDUCTIONS or func in _LIKE):
                return False
            try:
                result = func(*small_args, **small_kwargs)
            except Exception:  # noqa: BLE001
                return False
        if not isinstance(result, torch.Tensor) or result.numel() != 1:
            return False
        self._set_uniform(o, result)
        return True

    def _shadow_outputs(self, out, result) -> None:
        for o, r in zip([o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)],
                        [r for r in tree_flatten(result)[0] if isinstance(r, torch.Tensor)]):
            if is_fake(o):
                self.shadow[o] = r

    def _follow(self, func, args, kwargs, out) -> None:
        """Shadows and tags of one op's outputs. Most ops of a step read large activations that
        have no shadow: they leave at the first input without one."""
        written = _written(func, args, kwargs)
        if func in _LIKE:  # zeros_like & co.: known values whatever the input's, only its layout matters
            self._follow_like(func, args, kwargs, out)
            return
        tensors_in = _tensors(args, kwargs)
        if not written and func not in _NO_SHADOW:
            for a in tensors_in:
                if is_fake(a) and a not in self.shadow and getattr(a, "constant", None) is None:
                    if func in _TAG_OPS:
                        self._tag(func, args, _tensors(out, {}))
                    return
        flat_out = _tensors(out, {})
        small = sum(o.numel() for o in flat_out) <= SHADOW_LIMIT
        if written:
            self._follow_write(func, args, kwargs, tensors_in, written)
        elif func.is_view:  # a view of a shadowed tensor: the same view of its shadow
            raw = [self._raw(a) for a in tensors_in]
            if all(r is not None for r in raw):
                if len(raw) == 1 and _uniform(raw[0]) and id(tensors_in[0].untyped_storage()) not in self._void:
                    for o in flat_out:  # a view of one value expanded is that value expanded
                        self._set_uniform(o, _one(raw[0]))
                    return
                try:
                    self._shadow_outputs(out, self._real(func, *tree_map_only(torch.Tensor, self._raw,
                                                                               (args, kwargs))))
                except Exception:  # noqa: BLE001 -- a shadow is an extra; the fake op already ran
                    pass
        elif func in _NO_SHADOW:  # uninitialised: a shadow whose elements are all unknown
            if sum(o.numel() for o in flat_out) <= EMPTY_SHADOW_LIMIT:
                for o in flat_out:
                    with _disable_current_modes():
                        self.shadow[o] = torch.zeros_like(torch.empty_strided(tuple(o.shape), tuple(o.stride()),
                                                                               dtype=o.dtype))
                    self._mark(o, False)
        elif torch.Tag.nondeterministic_seeded not in func.tags:
            known = all(self._value(a) is not None for a in tensors_in)
            if known and sum(o.numel() for o in flat_out) > UNIFORM_FROM and self._uniform_result(
                    func, args, kwargs, tensors_in, flat_out):
                pass
            elif known and not small:
                self.too_large += 1
            elif known:
                try:
                    self._shadow_outputs(out, self._real(func, *tree_map_only(torch.Tensor, self._value,
                                                                               (args, kwargs))))
                except Exception:  # noqa: BLE001 -- a shadow is an extra; the fake op already ran
                    pass
        if func in _TAG_OPS:
            self._tag(func, args, flat_out)

    def _follow_like(self, func, args, kwargs, out) -> None:
        """zeros_like / ones_like / full_like: the one value they fill, as a uniform shadow when large."""
        with _disable_current_modes(), torch.no_grad():
            one = torch.empty([1] * out.dim(), dtype=args[0].dtype)
            value = func(one, *args[1:], **{k: v for k, v in kwargs.items() if k != "device"})
        if out.numel() > UNIFORM_FROM:
            self._set_uniform(out, value)
        else:
            with _disable_current_modes():
                self.shadow[out] = value.reshape(()).expand(tuple(out.shape)).clone(
                    memory_format=torch.contiguous_format).as_strided(tuple(out.shape), tuple(out.stride())) \
                    if out.is_contiguous() else value.reshape(()).expand(tuple(out.shape)).clone()

    def _follow_write(self, func, args, kwargs, tensors_in, written) -> None:
        """An in-place op: its destinations' shadows follow when its other inputs are known; an
        overwrite (fill_, zero_, copy_) makes the elements it writes known."""
        overwrite = func in _OVERWRITE
        if self._uniform and any(id(t.untyped_storage()) in self._uniform for t in written):
            for t in written:  # a uniform shadow cannot follow a write into part of it: void
                self._void.add(id(t.untyped_storage()))
            return
        dests = {id(t) for t in written}
        sources_known = all(self._value(a) is not None for a in tensors_in if id(a) not in dests)
        for t in written:
            if self._raw(t) is None and _whole(t) and t.numel() <= SHADOW_LIMIT and overwrite and sources_known:
                with _disable_current_modes():
                    self.shadow[t] = torch.empty_strided(tuple(t.shape), tuple(t.stride()), dtype=t.dtype)
        if not all(self._raw(t) is not None for t in written):
            for t in written:  # (a tensor without a shadow is unknown already)
                if self._raw(t) is not None:
                    self._mark(t, False)
            return
        dests_known = overwrite or all(self._value(t) is not None for t in written)
        if sources_known and dests_known:
            try:
                self._real(func, *tree_map_only(
                    torch.Tensor, lambda a: self._raw(a) if id(a) in dests else self._value(a), (args, kwargs)))
            except Exception:  # noqa: BLE001
                for t in written:
                    self._mark(t, False)
                return
            if overwrite:
                for t in written:
                    self._mark(t, True)
            return
        for t in written:
            self._mark(t, False)

    # tags: what an unknown boolean says ---------------------------------------------------------
    def _tag(self, func, args, flat_out) -> None:
        if len(flat_out) != 1 or not args:
            return
        out, a = flat_out[0], args[0]
        b = args[1] if len(args) > 1 else None
        tag = None
        ta = self.tag.get(a) if isinstance(a, torch.Tensor) else None
        tb = self.tag.get(b) if isinstance(b, torch.Tensor) else None
        if func is aten.abs.default:
            tag = "abs"
        elif func is aten.eq.Tensor and a is b:
            tag = "notnan"  # x == x
        elif func is aten.ne.Tensor and a is b:
            tag = "isnan"  # x != x
        elif func is aten.isnan.default:
            tag = "isnan"
        elif func in (aten.isinf.default,) or (func is aten.eq.Scalar and ta == "abs" and _is_inf(b)):
            tag = "isinf"
        elif func is aten.ne.Scalar and ta == "abs" and _is_inf(b):
            tag = "notinf"
        elif func is aten.isfinite.default:
            tag = "isfinite"
        elif func in _AND and {ta, tb} == {"notnan", "notinf"}:
            tag = "isfinite"
        elif func in _OR and {ta, tb} <= {"isnan", "isinf"} and ta and tb:
            tag = "nonfinite"
        elif func in _COMPARE:
            tag = "compare"
        elif func in _ALL and ta in ("isfinite", "compare"):
            tag = f"all:{ta}"
        elif func in _ANY and ta in ("isnan", "isinf", "nonfinite"):
            tag = f"any:{ta}"
        if tag is not None:
            self.tag[out] = tag

    # answers -------------------------------------------------------------------------------
    def _read(self, t):
        v = self._value(t)
        if v is not None:
            self.policy.note("values read from tensors known from the batch (shapes, masks, indices): exact")
            with _disable_current_modes():
                return v.item()
        tag = self.tag.get(t)
        if tag in _GUARDS:
            answer, what = _GUARDS[tag]
            self.policy.note(what)
            return answer
        large = (f"; {self.too_large} op(s) over known values had outputs above SHADOW_LIMIT ({SHADOW_LIMIT:,} "
                 f"elements), e.g. the pixel mask of a large batch" if self.too_large else "")
        raise RuntimeError(f"fake step: code reads the value of a tensor whose values are unknown under fake "
                           f"tensors ({tuple(t.shape)} {t.dtype}{', ' + tag if tag else ''}) and the fake-tensor "
                           f"policy has no answer for it (enact_bench/predict/fake_policy.py){large}")

    def _dynamic(self, func, args, kwargs):
        values = [self._value(a) if isinstance(a, torch.Tensor) else a for a in args]
        name = func.__name__.split(".")[0]
        if all(v is not None for v in values):
            result = self._real(func, values, kwargs)
            self.policy.note(f"{name} over tensors known from the batch: exact size")
            results = result if isinstance(result, tuple) else (result,)
            fakes = tuple(torch.empty_strided(tuple(r.shape), tuple(r.stride()), dtype=r.dtype, device=args[0].device)
                          for r in results)
            for f, r in zip(fakes, results):
                self.shadow[f] = r
            return fakes if isinstance(result, tuple) else fakes[0]
        if func is aten.nonzero.default:
            x = args[0]
            self.policy.note("nonzero of unknown values: bounded above (every element counted)")
            return torch.empty((x.numel(), x.dim()), dtype=torch.int64, device=x.device)
        if func is aten.masked_select.default:
            x, mask = args[0], args[1]
            n = torch.broadcast_shapes(x.shape, mask.shape)
            self.policy.note("masked_select of an unknown mask: bounded above (every element selected)")
            return torch.empty((math.prod(n),), dtype=x.dtype, device=x.device)
        if func is aten._unique2.default:
            x = args[0]
            self.policy.note("unique of unknown values: bounded above (every element distinct)")
            n = x.numel()
            return (torch.empty((n,), dtype=x.dtype, device=x.device),
                    torch.empty(tuple(x.shape) if kwargs.get("return_inverse", len(args) > 2 and args[2]) else (0,),
                                dtype=torch.int64, device=x.device),
                    torch.empty((n,) if kwargs.get("return_counts", len(args) > 3 and args[3]) else (0,),
                                dtype=torch.int64, device=x.device))
        raise RuntimeError(f"fake step: {func} over unknown values has a data-dependent size and the fake-tensor "
                           f"policy has no bound for it (enact_bench/predict/fake_policy.py)")

    def _mask_index(self, func, args, kwargs):
        """x[mask] and x[mask] = v: each boolean index becomes the long indices of its True
        elements (what the kernel does inside, with nonzero): exact where the mask is known, every
        element where it is not (bounded above). The index tensors are the kernel's own
        temporaries, so a tracker observing from inside the fake mode does not see them."""
        host = next((a.fake_mode for a in _tensors(args, kwargs) if is_fake(a)), None)
        depth = hasattr(host, "_depth")
        if depth:
            host._depth += 1
        try:
            indices = []
            for i in args[1]:
                if not _is_mask(i):
                    indices.append(i)
                    continue
                known = self._value(i)
                if known is not None:
                    with _disable_current_modes():
                        real = known.nonzero()  # (n, k)
                    self.policy.note("boolean-mask indexing over a mask known from the batch: exact")
                else:
                    real = None
                    self.policy.note("boolean-mask indexing over unknown values: bounded above (every element selected)")
                n = real.shape[0] if real is not None else i.numel()
                nz = torch.empty((n, i.dim()), dtype=torch.int64, device=i.device)
                if real is not None:
                    self.shadow[nz] = real
                indices += [nz.select(1, d) for d in range(i.dim())]
        finally:
            if depth:
                host._depth -= 1
        new_args = (args[0], indices, *args[2:])
        out = func(*new_args, **kwargs)
        self._follow(func, new_args, kwargs, out)
        return out


def _is_mask(i) -> bool:
    return isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)


class _OnTensor:
    """A mapping from fake tensors, kept in each tensor's own __dict__: no weak reference, because
    `module.to()` swaps fake tensors (torch.utils.swap_tensors), which one forbids (D-FINE's loss
    moves itself inside the step)."""

    def __init__(self, key: str):
        self.key = key

    def get(self, t, default=None):
        return t.__dict__.get(self.key, default)

    def __setitem__(self, t, value) -> None:
        t.__dict__[self.key] = value

    def __contains__(self, t) -> bool:
        return self.key in t.__dict__


def _uniform(r) -> bool:
    """r is one value expanded (every stride 0), of more than one element."""
    return r.numel() > 1 and all(st == 0 for st in r.stride())


def _one(r) -> torch.Tensor:
    """A one-element view of r's first element, with r's number of dimensions."""
    with _disable_current_modes():
        return r.as_strided([1] * r.dim(), [1] * r.dim(), r.storage_offset())


def _is_inf(v) -> bool:
    return isinstance(v, float) and math.isinf(v)


def _whole(t) -> bool:
    """t covers its whole storage, contiguously (a write into it defines all of the storage)."""
    return t.is_contiguous() and t.numel() * t.element_size() == t.untyped_storage().nbytes()


def _written(func, args, kwargs) -> list:
    """The tensors an op writes into (in place, out=)."""
    where = written_args(func)
    if not where:
        return []
    out = []
    for i, name, kwarg_only in where:
        v = kwargs.get(name) if (kwarg_only or i >= len(args)) else args[i]
        out += _tensors((v,), {})
    return out


def _tensors(args, kwargs) -> list:
    """The tensors among an op's arguments (or outputs): plain, or in a list / tuple."""
    found = []
    for group in (args if isinstance(args, (tuple, list)) else (args,), kwargs.values()):
        for a in group:
            if isinstance(a, torch.Tensor):
                found.append(a)
            elif isinstance(a, (list, tuple)):
                found.extend(x for x in a if isinstance(x, torch.Tensor))
    return found


# --- Python-level answers ---------------------------------------------------------------------
@contextlib.contextmanager
def _patched(targets: list[tuple[object, str, object]]):
    """setattr(obj, name, new) for each target; the old values back on exit."""
    old = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, new in targets:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, value in old:
            setattr(obj, name, value)


def _modules_holding(value) -> list:
    return [m for m in list(sys.modules.values()) if m is not None and getattr(m, "__dict__", {}).get(
        getattr(value, "__name__", ""), None) is value]


def _fixed_assignment(policy: FakePolicy):
    """Every loaded module's `linear_sum_assignment` (scipy's) answers fake cost matrices with query i
    <-> target i, min(rows, columns) pairs; real ones go to scipy as before."""
    try:
        from scipy.optimize import linear_sum_assignment as scipy_lsa
    except ImportError:
        return contextlib.nullcontext()
    import numpy as np

    def fixed(cost_matrix, maximize=False):
        if not is_fake(cost_matrix):
            return scipy_lsa(cost_matrix, maximize)
        k = min(cost_matrix.shape[0], cost_matrix.shape[1])
        policy.note("Hungarian matcher (scipy linear_sum_assignment): fixed assignment, query i <-> target i")
        return np.arange(k), np.arange(k)

    fixed.__name__ = "linear_sum_assignment"
    return _patched([(m, "linear_sum_assignment", fixed) for m in _modules_holding(scipy_lsa)])


def _hf_not_tracing(policy: FakePolicy):
    """transformers' is_tracing(tensor) without its fake-tensor test (eager mode's answer)."""
    mod = sys.modules.get("transformers.utils.import_utils")
    original = getattr(mod, "is_tracing", None) if mod is not None else None
    if original is None:
        return contextlib.nullcontext()

    def is_tracing(tensor=None):
        traced = original(None)
        if tensor is not None and not traced and is_fake(tensor):
            policy.note("HF is_tracing(fake tensor): False, as in eager mode (padding masks dropped as eager drops them)")
        return traced or (tensor is not None and not is_fake(tensor) and original(tensor))

    return _patched([(m, "is_tracing", is_tracing) for m in _modules_holding(original)])


def _swap_self_is_noop(policy: FakePolicy):
    """`module.to(device)` swaps every fake parameter with its converted copy (nn.Module._apply uses
    torch.utils.swap_tensors for fake tensors), which fails for a parameter made from a literal
    (FakeTensorMode keeps a weak reference to its constant). A converted copy of the same device,
    dtype, shape and strides is the same fake tensor, so that swap is skipped (D-FINE's and
    DEIMv2's loss modules move themselves to the device inside the step)."""
    import torch.utils

    original = torch.utils.swap_tensors

    def swap_tensors(t1, t2):
        same = (is_fake(t1) and is_fake(t2) and t1.device == t2.device and t1.dtype == t2.dtype
                and t1.shape == t2.shape and t1.stride() == t2.stride())
        if same:
            policy.note("module.to() onto the device its fake tensors are on: kept as they are")
            return None
        return original(t1, t2)

    return _patched([(torch.utils, "swap_tensors", swap_tensors)])


def _lru_caches(model) -> list:
    """The lru caches (functools) behind the methods of the model's module classes (HF's
    compile_compatible_method_lru_cache wraps one in a closure)."""
    found, seen = [], set()
    for cls in {type(m) for m in model.modules()}:
        for klass in cls.__mro__:
            for value in vars(klass).values():
                fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                for cell in getattr(fn, "__closure__", None) or ():
                    try:
                        inner = cell.cell_contents
                    except ValueError:
                        continue
                    if hasattr(inner, "cache_clear") and id(inner) not in seen:
                        seen.add(id(inner))
                        found.append(inner)
    return found


@contextlib.contextmanager
def _lru_caches_cleared(model):
    caches = _lru_caches(model)
    for c in caches:
        c.cache_clear()
    try:
        yield
    finally:
        for c in caches:
            c.cache_clear()


# --- which parameters get a gradient -----------------------------------------------------------
def params_with_grad(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors (parameters) the backward of `loss` would give a gradient: the
    AccumulateGrad nodes of its graph. A fake step primes optimizer state for these only, as a
    real first step leaves it (HF's Conditional DETR leaves its first query_scale without one)."""
    found: set[int] = set()
    seen: set = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None:
            found.add(id(var))
        stack.extend(n for n, _ in node.next_functions)
    return found


def wants_policy(model) -> bool:
    """Models we did not write opt in (ForeignDetector.fake_policy); the presets answer their own."""
    return bool(getattr(model, "fake_policy", False))
