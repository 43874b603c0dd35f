"""Small probes used around one training step: saved-for-backward bytes and the attention kernel.

Both work with real and with fake tensors (FakeTensorMode), so the full-size estimate and the
tiny real runs report the same quantities.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that reveal which scaled-dot-product-attention kernel ran. The math path of SDPA is a
# composite op: it decomposes into matmul/softmax before reaching a dispatch mode, so it shows up
# as `_softmax` + `bmm` with none of these.
FUSED_ATTENTION_OPS = {
    "aten._scaled_dot_product_flash_attention_for_cpu": "sdpa_flash_cpu",
    "aten._scaled_dot_product_flash_attention": "sdpa_flash",
    "aten._scaled_dot_product_efficient_attention": "sdpa_efficient",
    "aten._scaled_dot_product_cudnn_attention": "sdpa_cudnn",
    "aten._scaled_dot_product_fused_attention_overrideable": "sdpa_fused_other",
    "aten._efficient_attention_forward": "sdpa_efficient",
    "aten._flash_attention_forward": "sdpa_flash",
}
SOFTMAX_OPS = {"aten._softmax", "aten.softmax", "aten._safe_softmax"}


class OpRecorder(TorchDispatchMode):
    """Records the name (overload packet) of every aten op that runs inside the block."""

    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket._qualified_op_name).replace("::", "."))
        return func(*args, **(kwargs or {}))


def attention_paths(ops: set[str]) -> list[str]:
    """The attention kernels that ran, from the ops recorded in a forward pass.

    "math" means an explicit softmax ran (nn.MultiheadAttention with need_weights=True, the SDPA
    math fallback, or hand-written attention): the full attention matrix is stored for backward.
    A forward may contain both (DETR: math in its encoder, fused elsewhere).
    """
    found = {label for op, label in FUSED_ATTENTION_OPS.items() if op in ops}
    if ops & SOFTMAX_OPS:
        found.add("math")
    return sorted(found)


class SavedTensorCounter:
    """Peak of the live bytes of the unique storages that autograd saved for backward.

    Each storage packed inside `counting()` is counted once, from when it is first saved until
    it is freed (weakref finalizer), so a storage dropped with a discarded graph branch in the
    forward, and a later one that reuses its address or id, are not confused. Over a training
    step the peak is reached at the end of the forward: the activation memory kept for backward.
    Storages in `exclude` (parameters and buffers: alive anyway) are not counted.
    """

    def __init__(self, exclude: list[torch.Tensor] = (), on_save=None):
        self._exclude = {id(t.untyped_storage()) for t in exclude}
        self._on_save = on_save  # called with the storage's id() when it is first counted
        self._live: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def _pack(self, t: torch.Tensor):
        if t.layout == torch.strided:
            st = t.untyped_storage()
            key = id(st)
            if key not in self._exclude and key not in self._live:
                self._live[key] = st.nbytes()
                self.current_bytes += self._live[key]
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
                weakref.finalize(st, self._free, key)
                if self._on_save is not None:
                    self._on_save(key)
        # a detached alias, not `t`: an op's own output saved for its backward (relu, sigmoid, exp
        # save their result) would otherwise hold its grad_fn through the saved variable, a
        # reference cycle that keeps a discarded graph branch (and its storages) alive until the
        # garbage collector runs, where without the hooks it is freed at once; the detached alias
        # shares the storage and the version counter, and autograd re-wraps what unpack returns
        return t.detach()

    def _free(self, key: int) -> None:
        self.current_bytes -= self._live.pop(key, 0)

    @contextmanager
    def counting(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self

    @property
    def saved_bytes(self) -> int:
        return self.peak_bytes
