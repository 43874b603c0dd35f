"""CUDA's autocast, run on fake CPU tensors (the CUDA target's `--dtype bfloat16|float16`).

torch.autocast("cpu") applies the AutocastCPU op lists, which differ from CUDA's where a detector
spends its memory: on CUDA softmax, log_softmax, layer_norm, group_norm, exp, pow, sum and the
losses run in float32, so the attention weights nn.MultiheadAttention keeps for backward are
float32 there and bf16 on the CPU. A CUDA autocast kernel casts only tensors on a CUDA device
(`is_autocast_eligible`, aten/src/ATen/autocast_mode.h), so its kernels cannot be pointed at CPU
tensors; instead, while `cuda_autocast_kernels()` is active, Python kernels registered for the
AutocastCPU dispatch key replace the CPU's ones with CUDA's policy:

- every aten op that has an AutocastCUDA kernel gets CUDA's cast policy (the tables below);
- every aten op that has an AutocastCPU kernel and no AutocastCUDA one is a fallthrough (no cast).

The tables were read from PyTorch 2.14.1 (`TORCH_VERSION_READ`): aten/src/ATen/autocast_mode.h
(the AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE,
AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE and AT_FORALL_PROMOTE lists) and autocast_mode.cpp
(`TORCH_LIBRARY_IMPL(aten, Autocast, m)`: those lists with the CUDA device type, plus
cudnn_convolution / cudnn_convolution_transpose in lower precision and binary_cross_entropy
banned). The dispatcher of the running torch says which ops have an AutocastCUDA kernel
(`torch._C._dispatch_has_kernel_for_dispatch_key(op, "AutocastCUDA")`); `table_mismatch()`
compares it with the tables (tests/predict/test_autocast_cuda.py checks they agree, and checks
each op's output dtype against PyTorch's real AutocastCUDA kernels run on fake CUDA tensors).

The policies, as autocast_mode.h's WrapFunction_ specialisations implement them (each runs the
op with the autocast key excluded, so the ops inside it are not autocast again):
- lower_precision_fp: every floating tensor argument (Tensor, Tensor?, Tensor[]; not float64)
  cast to the autocast dtype;
- fp32: cast to float32;
- fp32_set_opt_dtype: when the first argument is eligible, `dtype=None` becomes float32;
- fp32_append_dtype (norm.Scalar, norm.ScalarOpt_dim): redispatched to the overload that takes a
  dtype, float32 when the first argument is eligible;
- promote: the widest floating type among the Tensor and Tensor[] arguments (float32 wins over the
  autocast dtype; float64 is ignored), every argument cast to it.
`cached_cast` (autocast_mode.cpp) keeps the low-precision copy of a float32 leaf that requires
grad (a parameter) for the rest of the autocast region and reuses it: `CudaAutocast.region()`
clears that cache when the outermost region ends, as torch.autocast's exit does.

Not modelled: `_cudnn_rnn` (a CUDA-only op with its own autocast kernel, aten/src/ATen/native/
cudnn/AutocastRNN.cpp; the CPU's RNNs never call it); custom ops' autocast registrations
(torch.library.register_autocast) are left as they are, so a custom op must register the same
cast for "cpu" and "cuda" (the project's deformable-attention op does: float32 on both).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

TORCH_VERSION_READ = "2.14.1"

# autocast_mode.h AT_FORALL_LOWER_PRECISION_FP, + autocast_mode.cpp's two cuDNN convolutions
LOWER_PRECISION_FP = (
    "_convolution.deprecated", "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d",
    "conv_transpose2d.input", "conv_transpose3d.input", "convolution", "prelu", "addmm", "addmv", "addr",
    "matmul", "einsum", "mm", "mv", "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul",
    "linalg_multi_dot", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell",
    "rnn_tanh_cell", "rnn_relu_cell", "_scaled_dot_product_flash_attention", "scaled_dot_product_attention",
    "cudnn_convolution", "cudnn_convolution_transpose",
)
# autocast_mode.h AT_FORALL_FP32; linalg_matrix_sqrth has an AutocastCUDA kernel registered
# outside autocast_mode.cpp: bf16 in, float32 out under fake-CUDA autocast (it takes no low precision)
FP32 = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
    "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar", "softplus", "layer_norm",
    "native_layer_norm", "rms_norm", "group_norm", "frobenius_norm.dim", "nuclear_norm", "nuclear_norm.dim",
    "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
    "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
    "upsample_nearest1d", "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d",
    "upsample_nearest3d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "_upsample_bilinear2d_aa", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
    "linalg_matrix_sqrth",
)
# autocast_mode.h AT_FORALL_FP32_SET_OPT_DTYPE
FP32_SET_OPT_DTYPE = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum", "linalg_vector_norm",
    "linalg_matrix_norm", "linalg_matrix_norm.str_ord", "sum", "sum.dim_IntList",
)
# autocast_mode.h AT_FORALL_DIFFERENT_REDISPATCH_SIGNATURE: the overload each redispatches to
FP32_APPEND_DTYPE = {"norm.Scalar": "norm.ScalarOpt_dtype", "norm.ScalarOpt_dim": "norm.ScalarOpt_dim_dtype"}
# autocast_mode.h AT_FORALL_PROMOTE
PROMOTE = ("addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
           "tensordot", "scatter_add")
# autocast_mode.cpp binary_cross_entropy_banned
BANNED = ("binary_cross_entropy",)
NOT_MODELLED = {"_cudnn_rnn": "CUDA-only op (cuDNN RNN), never dispatched on the CPU"}

POLICIES = ("lower_precision_fp", "fp32", "fp32_set_opt_dtype", "fp32_append_dtype", "promote", "banned")


def cuda_policy_table() -> dict[str, str]:
    """aten op overload name ("softmax.int"; "exp" is the default overload) -> CUDA's cast policy."""
    table: dict[str, str] = {}
    for names, policy in ((LOWER_PRECISION_FP, "lower_precision_fp"), (FP32, "fp32"),
                          (FP32_SET_OPT_DTYPE, "fp32_set_opt_dtype"), (tuple(FP32_APPEND_DTYPE), "fp32_append_dtype"),
                          (PROMOTE, "promote"), (BANNED, "banned")):
        for name in names:
            if name in table:
                raise ValueError(f"{name} is listed under two autocast policies")
            table[name] = policy
    return table


def _aten_name(qualified: str) -> str:
    """"aten::softmax.int" -> "softmax.int"."""
    return qualified.split("::", 1)[1]


_AUTOCAST_OPS: dict[str, frozenset[str]] = {}


def autocast_ops(key: str) -> frozenset[str]:
    """The aten ops (overload names) that have a kernel for the dispatch key `key` ("AutocastCUDA",
    "AutocastCPU") in the running torch, read from the dispatcher before any kernel of ours is
    registered (cached per process; ~0.1 s)."""
    if key not in _AUTOCAST_OPS:
        if _active:
            raise RuntimeError("autocast_ops() must first run outside cuda_autocast_kernels()")
        _AUTOCAST_OPS[key] = frozenset(
            _aten_name(n) for n in torch._C._dispatch_get_all_op_names()
            if n.startswith("aten::") and torch._C._dispatch_has_kernel_for_dispatch_key(n, key))
    return _AUTOCAST_OPS[key]


def load_dispatcher_tables() -> None:
    """Read autocast_ops() for both keys now (a process about to fork workers that will step)."""
    autocast_ops("AutocastCPU")
    autocast_ops("AutocastCUDA")


def table_mismatch() -> tuple[set[str], set[str]]:
    """(ops with an AutocastCUDA kernel missing from the tables, ops of the tables without one)."""
    dispatcher = set(autocast_ops("AutocastCUDA"))
    table = set(cuda_policy_table()) | set(NOT_MODELLED)
    return dispatcher - table, table - dispatcher


def _overload(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload or "default")


def _eligible(t) -> bool:
    """autocast_mode.h is_eligible: a defined floating tensor, not float64 (every fake CPU
    tensor of the step stands for a tensor on the GPU)."""
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64


@dataclass
class CudaAutocast:
    """CUDA's autocast policy for fake CPU tensors; `region()` is the autocast context of the
    forward and loss (torch.autocast("cpu", dtype) with CUDA's kernels in place of the CPU's)."""

    dtype: torch.dtype
    casts: int = 0  # tensors cast (a count for tests and records)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"CUDA autocast runs in bfloat16 or float16, got {self.dtype}")

    @contextmanager
    def region(self):
        with torch.autocast("cpu", dtype=self.dtype):
            yield
        if not torch.is_autocast_enabled("cpu"):  # the outermost region ended: autocast clears its cache
            self._cache.clear()

    # -- autocast_mode.cpp cached_cast ------------------------------------------------------------
    def cast(self, to_type: torch.dtype, arg):
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.cast(to_type, a) for a in arg)
        if not _eligible(arg) or arg.dtype == to_type:
            return arg
        lower = torch.get_autocast_dtype("cpu")
        if (to_type == lower and arg.dtype == torch.float32 and arg.requires_grad and arg.is_leaf
                and not arg._is_view() and torch.is_autocast_cache_enabled()):
            hit = self._cache.get(id(arg))
            if hit is not None and hit[0] is arg:
                return hit[1]
            out = arg.to(to_type)
            self._cache[id(arg)] = (arg, out)
        else:
            out = arg.to(to_type)
        self.casts += 1
        return out

    def promote_type(self, values) -> torch.dtype:
        """autocast_mode.h promote_type / prioritize over the Tensor and Tensor[] arguments."""
        lower = torch.get_autocast_dtype("cpu")
        current = lower
        for v in values:
            for t in (v if isinstance(v, (list, tuple)) else (v,)):
                if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == torch.float64:
                    continue
                if current == torch.float32 or t.dtype == torch.float32:
                    current = torch.float32
                elif not (current == lower and t.dtype == lower):
                    raise RuntimeError("Unexpected floating ScalarType in at::autocast::prioritize")
        return current


_active: CudaAutocast | None = None


def active() -> CudaAutocast | None:
    """The CudaAutocast whose kernels are registered now, if any."""
    return _active


def _exclude_autocast_cpu():
    return torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU))


def _cast_positions(op) -> tuple[list[int], list[int]]:
    """Indices of the arguments cached_cast touches (Tensor, Tensor?, Tensor[]) and of those
    prioritize reads (Tensor, Tensor[]; an optional tensor falls to its no-op template)."""
    cast, prio = [], []
    for i, a in enumerate(op._schema.arguments):
        t = a.type
        if isinstance(t, torch.TensorType):
            cast.append(i)
            prio.append(i)
        elif isinstance(t, torch.OptionalType) and isinstance(t.getElementType(), torch.TensorType):
            cast.append(i)
        elif isinstance(t, torch.ListType) and isinstance(t.getElementType(), torch.TensorType):
            cast.append(i)
            prio.append(i)
    return cast, prio


def _make_kernel(state: CudaAutocast, name: str, policy: str):
    op = _overload(name)
    schema = op._schema
    names = [a.name for a in schema.arguments]
    cast_at, prio_at = _cast_positions(op)
    dtype_at = next((i for i, a in enumerate(schema.arguments) if a.name == "dtype"), None)

    defaults = [a.default_value if a.has_default_value() else _MISSING for a in schema.arguments]

    def bind(args, kwargs) -> list:
        """The arguments in schema order; the dispatcher leaves out trailing defaults."""
        return list(args) + [kwargs.get(n, d) for n, d in zip(names[len(args):], defaults[len(args):])]

    def call(target, values):
        args, kwargs = [], {}
        for a, v in zip(target._schema.arguments, values):
            if v is _MISSING:
                continue
            if a.kwarg_only:
                kwargs[a.name] = v
            else:
                args.append(v)
        return target(*args, **kwargs)

    if policy == "banned":
        def kernel(*args, **kwargs):
            raise RuntimeError(f"torch.nn.functional.{name} and torch.nn.BCELoss are unsafe to autocast "
                               "(autocast_mode.cpp binary_cross_entropy_banned); use binary_cross_entropy_with_logits")
        return kernel

    if policy == "fp32_append_dtype":
        redispatch = _overload(FP32_APPEND_DTYPE[name])

        def kernel(*args, **kwargs):
            values = bind(args, kwargs)
            out_type = torch.float32 if _eligible(values[0]) else values[0].dtype
            with _exclude_autocast_cpu():
                rnames = [a.name for a in redispatch._schema.arguments]
                by_name = dict(zip(names, values))
                by_name["dtype"] = out_type
                return call(redispatch, [by_name.get(n, _MISSING) for n in rnames])
        return kernel

    def kernel(*args, **kwargs):
        values = bind(args, kwargs)
        if policy == "fp32_set_opt_dtype":
            if _eligible(values[0]) and dtype_at is not None and values[dtype_at] in (None, _MISSING):
                values[dtype_at] = torch.float32
        else:
            if policy == "lower_precision_fp":
                to_type = torch.get_autocast_dtype("cpu")
            elif policy == "fp32":
                to_type = torch.float32
            else:  # promote
                to_type = state.promote_type([values[i] for i in prio_at if values[i] is not _MISSING])
            # the C++ wrapper casts in `F(cached_cast(args)...)`, a call whose arguments GCC (the
            # compiler of PyTorch's Linux wheels) evaluates right to left: the last argument's cast
            # is allocated first (a convolution's weight before its input)
            for i in reversed(cast_at):
                if values[i] is not _MISSING and values[i] is not None:
                    values[i] = state.cast(to_type, values[i])
        with _exclude_autocast_cpu():
            out = call(op, values)
        # C++ destroys those temporaries in the reverse order of their construction, the first
        # argument's first; a Python list would drop its items last to first
        for i in cast_at:
            values[i] = None
        return out
    return kernel


_MISSING = object()


@contextmanager
def cuda_autocast_kernels(dtype: torch.dtype):
    """Inside the block, the AutocastCPU key runs CUDA's autocast policy (module docstring);
    enter `state.region()` (the yielded CudaAutocast) around the forward and loss, as
    torch.autocast would be. The CPU's own kernels come back on exit."""
    global _active
    if _active is not None:
        raise RuntimeError("cuda_autocast_kernels() is already active")
    table = cuda_policy_table()
    cpu_only = autocast_ops("AutocastCPU") - autocast_ops("AutocastCUDA")
    state = CudaAutocast(dtype)
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel" (the CPU's)
            warnings.simplefilter("ignore")
            for name, policy in table.items():
                if hasattr(torch.ops.aten, name.partition(".")[0]):
                    lib.impl(name, _make_kernel(state, name, policy), "AutocastCPU")
            for name in sorted(cpu_only):
                lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        _active = state
        yield state
    finally:
        _active = None
        lib._destroy()
        state._cache.clear()
