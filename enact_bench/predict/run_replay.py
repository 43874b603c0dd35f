"""A training run of many steps through ONE caching-allocator model: `replay_run`.

One step's stream (a fake step's ordered alloc/free events) starts by allocating what is alive
before the step: the model's parameters, buffers, gradients and AdamW state, then the batch, then
any extra live tensors (DDP's buckets): `StepMeasure.live_before_counts` says how many of each.
Across steps the allocator keeps its cached segments, which is what can make a run of changing
shapes reserve more than one step of its worst shape. Chained here:

- step 1 is replayed whole (the workspaces first, as `device_memory` does);
- each later step's model state is the previous step's, still live: its first events are matched
  to the live allocations of the same size (parameters and AdamW state are the same tensors; the
  gradients the previous backward made stand for the ones this step's zero_grad frees, matched
  by size in order: an assumption about which of equal-sized blocks is which);
- its batch is allocated, then the previous batch freed (the originals' loop binds the next
  batch before the last one is dropped), and anything else the previous step left alive;
- the rest of its events run as they are.

With the GPU's allocator limit (usable memory less the CUDA context) the model runs PyTorch's
release-and-retry path: cached segments are freed when cudaMalloc would fail, and a step that
still does not fit is an out-of-memory (`RunReplay.oom_step`).

Pure Python, no torch.
"""
from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from enact_bench.predict.allocator import AllocatorOutOfMemory, AllocatorStats, CachingAllocatorModel


@dataclass(frozen=True)
class RunReplay:
    """What the allocator model makes of a run of steps (bytes; estimates)."""

    steps: int
    stats: AllocatorStats  # peaks over the whole run; reserved_end_bytes: reserved after it
    oom_step: int | None  # the step (1-based) whose allocation did not fit, None if the run fits
    retries: int  # how often cached segments were released to make room


def replay_run(steps, *, preallocate=(), memory_limit_bytes: int | None = None) -> RunReplay:
    """`steps`: (events, (n_state, n_batch, n_extra)) per step, in order (module docstring)."""
    model = CachingAllocatorModel(memory_limit_bytes=memory_limit_bytes)
    pre = 0
    for i, nbytes in enumerate(preallocate):
        model.malloc(-(i + 1), int(nbytes))
        pre += int(nbytes)
    model._preallocated = pre
    batch_keys: list = []
    done = 0
    try:
        for n, (events, (n_state, n_batch, n_extra)) in enumerate(steps):
            head = n_state + n_batch + n_extra
            if any(kind != "alloc" for kind, _, _ in events[:head]):
                raise ValueError(f"step {n + 1}: its first {head} events must allocate the tensors alive before it")
            keys: dict = {}
            if n == 0:
                for _, key, nbytes in events[:head]:
                    keys[key] = (n, key)
                    model.malloc(keys[key], nbytes)
            else:
                carried = defaultdict(deque)  # the previous step's live allocations but its batch, by size
                live_batch = set(batch_keys)
                for key, nbytes in model.live_requests().items():
                    if not (isinstance(key, int) and key < 0) and key not in live_batch:
                        carried[nbytes].append(key)
                for _, key, nbytes in events[:n_state] + events[n_state + n_batch:head]:
                    if not carried[nbytes]:
                        raise ValueError(f"step {n + 1}: no live allocation of {nbytes} B left from the step before "
                                         f"for its model state")
                    keys[key] = carried[nbytes].popleft()
                for _, key, nbytes in events[n_state:n_state + n_batch]:  # the next batch, then the last one goes
                    keys[key] = (n, key)
                    model.malloc(keys[key], nbytes)
                for key in batch_keys:
                    model.free(key)
                # what the step before left alive beyond its state and batch is gone by now
                for left in carried.values():
                    for key in left:
                        model.free(key)
            batch_keys = [keys[key] for _, key, _ in events[n_state:n_state + n_batch]]
            for kind, key, nbytes in events[head:]:
                if kind == "alloc":
                    keys[key] = (n, key)
                    model.malloc(keys[key], nbytes)
                else:
                    model.free(keys.pop(key, (n, key)))
            done = n + 1
    except AllocatorOutOfMemory:
        return RunReplay(done + 1, model.stats(), done + 1, model.stats().num_alloc_retries)
    return RunReplay(done, model.stats(), None, model.stats().num_alloc_retries)
