"""What DistributedDataParallel keeps on each rank, beside the model: its gradient buckets.

DDP's C++ reducer (torch/csrc/distributed/c10d/reducer.cpp, `initialize_buckets`) allocates one
flat tensor per bucket, `at::empty({sum of the bucket's parameter numels})` in the parameters'
dtype on their device; with the default `gradient_as_bucket_view=False` the gradients stay
separate tensors: in backward each gradient is copied into its bucket view (`mul_out` by
1/world_size), the bucket is all-reduced in place, and the result is copied back into `.grad`.
So the buckets add exactly the bytes of the trainable parameters, for the whole training step,
whatever the bucket layout. The layout: one bucket at construction (torch/nn/parallel/
distributed.py, `_BucketCapacityConfig.compute_bucket_size_limits`: without
find_unused_parameters the first assignment is unbounded), rebuilt after the first iteration in
gradient-ready order with caps of `dist._DEFAULT_FIRST_BUCKET_BYTES` (1 MiB) for the first bucket
and 25 MiB (`bucket_cap_mb`) for the others. During that rebuild (the second iteration's
forward) the old and new buckets are both alive once; the harness measures a later step.

Not counted here, because no allocator sees them: Gloo's and NCCL's own communication buffers.
Transient and small: the flat copy of the module's buffers that DDP broadcasts from rank 0 at
every forward (`broadcast_buffers=True`), freed before the forward's activations grow.
"""
from __future__ import annotations

import torch

DEFAULT_BUCKET_CAP_BYTES = 25 * 2**20  # torch.nn.parallel.distributed._DEFAULT_BUCKET_CAP_MB


def first_bucket_bytes() -> int:
    import torch.distributed as dist
    return int(getattr(dist, "_DEFAULT_FIRST_BUCKET_BYTES", 2**20))


def trainable_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters DDP reduces (requires_grad ones; each tied parameter once)."""
    seen: dict[int, int] = {}
    for p in model.parameters():
        if p.requires_grad:
            seen[id(p)] = p.numel() * p.element_size()
    return sum(seen.values())


def bucket_layout_bytes(model: torch.nn.Module) -> list[int]:
    """Bytes of each bucket as DDP rebuilds them after the first iteration, approximating the
    gradient-ready order by the reverse of the parameter order (what DDP assumes before it has
    seen a backward). The sum is exact; the split matters only for allocator rounding."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad][::-1]
    if not params:
        return []
    limits = [first_bucket_bytes(), DEFAULT_BUCKET_CAP_BYTES]
    indices, _ = dist._compute_bucket_assignment_by_size(params, limits, [False] * len(params))
    return [sum(params[i].numel() * params[i].element_size() for i in bucket) for bucket in indices]


def make_bucket_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Empty tensors of the buckets' sizes (under FakeTensorMode: fake ones), to be counted as
    live through an estimated step. One dtype per bucket: the parameters' (float32 here)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    dtype, device = params[0].dtype, params[0].device
    if any(p.dtype != dtype for p in params):
        raise ValueError("DDP buckets are per dtype; mixed parameter dtypes are not modelled")
    return [torch.empty(nbytes // params[0].element_size(), dtype=dtype, device=device)
            for nbytes in bucket_layout_bytes(model)]


def reducer_bucket_bytes(ddp_model) -> list[int]:
    """The reducer's own bucket sizes in bytes (DDP's logging data), after the rebuild if it
    happened (`rebuilt_bucket_sizes`), else the construction-time ones (`bucket_sizes`)."""
    data = ddp_model._get_ddp_logging_data()
    text = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes") or ""
    return [int(x) for x in str(text).replace(",", " ").split()]
