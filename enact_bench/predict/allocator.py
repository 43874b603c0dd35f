"""A model of PyTorch's CUDA caching allocator, replayed over an ordered stream of allocations.

Pure Python (no torch import). It predicts what `torch.cuda.max_memory_allocated` and
`torch.cuda.max_memory_reserved` would read for a stream of tensor allocations and frees, such as
the one `LiveTensorTracker(record_events=True)` records on a CPU or under FakeTensorMode.

What is modelled, each rule with its source: PyTorch's c10/cuda/CUDACachingAllocator.cpp
(DeviceCachingAllocator; read at the 2.x series, the constants unchanged since 1.x) and the
defaults of c10/core/AllocatorConfig.h (AcceleratorAllocatorConfig). The names below are theirs.

- Rounding, `round_size`: a request below kMinBlockSize (512 B) becomes 512 B; any other is
  rounded up to a multiple of 512 B. `roundup_power2_divisions` is empty by default
  (AllocatorConfig.h: `roundup_power2_divisions_` starts empty, so `roundup_power2_divisions(size)`
  is 0 and the power-of-two branch is never taken); not modelled.
- Zero-byte requests: `CUDACachingAllocator::allocate` returns a null pointer for size 0 and never
  calls `malloc`, so they cost nothing and are ignored here (and so are their frees).
- Pools, `get_pool`: a rounded size <= kSmallSize (1 MiB) is served from the small pool, anything
  larger from the large pool. A freed block returns to the pool of its segment.
- Segment size, `get_allocation_size`: a small request gets a new kSmallBuffer (2 MiB) segment;
  a large one below kMinLargeAlloc (10 MiB) a kLargeBuffer (20 MiB) segment; 10 MiB and above its
  own segment, rounded up to kRoundLarge (2 MiB).
- Best fit, `get_free_block`: the pool is a set ordered by (stream, size, address)
  (`BlockComparatorSize`); `lower_bound` of the rounded size picks the smallest cached block that
  fits, the lowest address among equal sizes. Addresses are not known off-GPU: this model gives
  segments increasing addresses in the order they are created (cudaMalloc makes no such promise;
  it only decides ties between cached blocks of equal size).
- Oversize blocks: with `max_split_size` set (PYTORCH_CUDA_ALLOC_CONF max_split_size_mb), a request
  below it never takes a cached block >= max_split_size, and a request at or above it takes one
  only if the block is smaller than size + max_non_split_rounding_size (default kLargeBuffer,
  20 MiB). Both defaults are "unlimited" / 20 MiB (AllocatorConfig.h: `max_split_size_` =
  numeric_limits<size_t>::max(), `max_non_split_rounding_size_` = kLargeBuffer), which disables the
  first rule; both are parameters here.
- Splitting, `should_split`: the remainder of a block is split off and returned to the pool when
  remaining >= kMinBlockSize in the small pool, or size < max_split_size and remaining > kSmallSize
  (1 MiB) in the large pool. Otherwise the whole block is handed out.
- What counts, `alloc_found_block`: `allocated_bytes` grows by `block->size`, the whole block when
  it was not split (so a 9 MiB request served from a cached 10 MiB block counts 10 MiB), and
  `requested_bytes` by the size asked for; `reserved_bytes` (`alloc_block`) by the segment size.
  Peaks are the running maxima of each (`increase_stat`).
- Frees, `free_block` / `try_merge_blocks`: a freed block is merged with its free neighbours in the
  same segment (previous and next) and goes back to its pool; segments are never returned to the
  device on a free.
- No free block, `malloc`: a new segment is allocated (`alloc_block`). Cached blocks are released
  (`release_available_cached_blocks`, then `release_cached_blocks`, which frees every cached
  segment that is not split, in both pools) only when that cudaMalloc fails. Without a memory limit
  the model never fails, so reserved memory only grows: the "no release" case, which is what a run
  that fits sees. With `memory_limit_bytes` the model runs the OOM path: when the new segment would
  pass the limit it releases (oversize blocks first when max_split_size is set, then all unsplit
  cached segments), retries once, and raises `AllocatorOutOfMemory` if it still does not fit.
- Streams: one stream only. Blocks are reused only on the stream that freed them, and the model
  has exactly one (the default stream); cross-stream `record_stream` events, CUDA graphs' private
  pools, `garbage_collection_threshold` (needs a memory fraction) and expandable_segments (off by
  default: `use_expandable_segments_` = false) are not modelled.

The GPU libraries' own allocations through this allocator (the cuBLAS/cuBLASLt workspaces) are
not in a CPU-recorded stream; `enact_bench.predict.gpus.library_workspace_bytes` gives them, to
replay first (`replay(events, preallocate=...)`), as PyTorch keeps them from the first matmul on.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable

from enact_bench.metrics import MIB

K_MIN_BLOCK_SIZE = 512  # kMinBlockSize
K_SMALL_SIZE = 1_048_576  # kSmallSize: largest "small" allocation, 1 MiB
K_SMALL_BUFFER = 2_097_152  # kSmallBuffer: small requests are packed in 2 MiB segments
K_LARGE_BUFFER = 20_971_520  # kLargeBuffer: 1-10 MiB requests may share 20 MiB segments
K_MIN_LARGE_ALLOC = 10_485_760  # kMinLargeAlloc: from 10 MiB a request gets its own segment
K_ROUND_LARGE = 2_097_152  # kRoundLarge: own segments are rounded up to 2 MiB
UNLIMITED = 2**64 - 1  # numeric_limits<size_t>::max(): the default max_split_size


class AllocatorOutOfMemory(MemoryError):
    """The modelled allocator could not fit a request under `memory_limit_bytes`."""


def round_size(nbytes: int) -> int:
    """`round_size` with roundup_power2_divisions off (the default)."""
    if nbytes < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    return K_MIN_BLOCK_SIZE * ((nbytes + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE)


def allocation_size(size: int) -> int:
    """`get_allocation_size`: the segment a rounded request of `size` bytes opens."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return K_ROUND_LARGE * ((size + K_ROUND_LARGE - 1) // K_ROUND_LARGE)


@dataclass(frozen=True)
class AllocatorStats:
    """Peaks (and final values) of a replay, in bytes; what torch.cuda.memory_stats would read.

    alloc_peak_bytes ~ max_memory_allocated, reserved_peak_bytes ~ max_memory_reserved,
    requested_peak_bytes ~ memory_stats()["requested_bytes.all.peak"] (the sizes asked for, no
    rounding: it equals the tracker's peak for the same stream).
    """

    alloc_peak_bytes: int
    reserved_peak_bytes: int
    requested_peak_bytes: int
    segments_peak: int
    allocated_end_bytes: int = 0
    reserved_end_bytes: int = 0
    segments_end: int = 0
    num_allocs: int = 0
    num_segment_allocs: int = 0  # cudaMalloc calls
    num_segment_frees: int = 0  # cudaFree calls (only on the OOM path)
    num_alloc_retries: int = 0
    preallocated_bytes: int = 0  # library workspaces replayed first (requested bytes)
    mode: str = "caching"

    def __post_init__(self):
        for name in ("alloc_peak_bytes", "reserved_peak_bytes", "requested_peak_bytes", "segments_peak",
                     "allocated_end_bytes", "reserved_end_bytes", "segments_end", "num_allocs",
                     "num_segment_allocs", "num_segment_frees", "num_alloc_retries", "preallocated_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"AllocatorStats.{name} must be a non-negative int, got {v!r}")
        if self.mode not in ("caching", "exact"):
            raise ValueError(f"AllocatorStats.mode must be 'caching' or 'exact', got {self.mode!r}")
        if not self.requested_peak_bytes <= self.alloc_peak_bytes <= self.reserved_peak_bytes:
            raise ValueError("AllocatorStats must satisfy requested <= allocated <= reserved peaks, got "
                             f"{self.requested_peak_bytes}, {self.alloc_peak_bytes}, {self.reserved_peak_bytes}")

    @property
    def alloc_peak_mib(self) -> float:
        return self.alloc_peak_bytes / MIB

    @property
    def reserved_peak_mib(self) -> float:
        return self.reserved_peak_bytes / MIB

    @property
    def requested_peak_mib(self) -> float:
        return self.requested_peak_bytes / MIB


class _Block:
    __slots__ = ("addr", "size", "requested", "allocated", "prev", "next", "small", "segment")

    def __init__(self, addr: int, size: int, small: bool, segment: int):
        self.addr = addr
        self.size = size
        self.requested = 0
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.small = small
        self.segment = segment

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class CachingAllocatorModel:
    """DeviceCachingAllocator for one device and one stream, expandable_segments off.

    `malloc(key, nbytes)` / `free(key)`: key names a live allocation (e.g. a storage's id); a key
    may be reused once freed. `mode="exact"` turns the model into a plain counter (no rounding,
    no caching: allocated = reserved = requested), to check a stream against the tracker's peak.
    """

    def __init__(self, *, max_split_size: int = UNLIMITED, max_non_split_rounding_size: int = K_LARGE_BUFFER,
                 memory_limit_bytes: int | None = None, mode: str = "caching"):
        if mode not in ("caching", "exact"):
            raise ValueError(f"mode must be 'caching' or 'exact', got {mode!r}")
        if max_split_size <= K_SMALL_SIZE:
            raise ValueError(f"max_split_size must be above 1 MiB (PyTorch's max_split_size_mb > 1), got {max_split_size}")
        if memory_limit_bytes is not None and memory_limit_bytes <= 0:
            raise ValueError(f"memory_limit_bytes must be positive or None, got {memory_limit_bytes}")
        self.mode = mode
        self.max_split_size = max_split_size
        self.max_non_split_rounding_size = max_non_split_rounding_size
        self.memory_limit_bytes = memory_limit_bytes
        # free blocks per pool, ordered like BlockComparatorSize: (size, addr) -> block
        self._pools: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._free_blocks: dict[tuple[int, int], _Block] = {}
        self._live: dict[int, _Block | int] = {}
        self._segments: dict[int, int] = {}  # segment id -> size
        self._next_addr = 0
        self._next_segment = 0
        self._allocated = self._reserved = self._requested = 0
        self._max_allocated = self._max_reserved = self._max_requested = self._max_segments = 0
        self._num_allocs = self._num_seg_allocs = self._num_seg_frees = self._num_retries = 0
        self._preallocated = 0

    # --- public counters --------------------------------------------------------------------
    @property
    def allocated_bytes(self) -> int:
        return self._allocated

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    @property
    def requested_bytes(self) -> int:
        return self._requested

    @property
    def max_allocated_bytes(self) -> int:
        return self._max_allocated

    @property
    def max_reserved_bytes(self) -> int:
        return self._max_reserved

    @property
    def max_requested_bytes(self) -> int:
        return self._max_requested

    @property
    def segments(self) -> int:
        return len(self._segments)

    def live_requests(self) -> dict:
        """key -> bytes asked for, of every live allocation (in the order they were made)."""
        return {k: (b if isinstance(b, int) else b.requested) for k, b in self._live.items()}

    def reset_peak(self) -> None:
        """Like torch.cuda.reset_peak_memory_stats: peaks restart at the current values."""
        self._max_allocated, self._max_reserved = self._allocated, self._reserved
        self._max_requested, self._max_segments = self._requested, len(self._segments)

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            alloc_peak_bytes=self._max_allocated, reserved_peak_bytes=self._max_reserved,
            requested_peak_bytes=self._max_requested, segments_peak=self._max_segments,
            allocated_end_bytes=self._allocated, reserved_end_bytes=self._reserved,
            segments_end=len(self._segments), num_allocs=self._num_allocs,
            num_segment_allocs=self._num_seg_allocs, num_segment_frees=self._num_seg_frees,
            num_alloc_retries=self._num_retries, preallocated_bytes=self._preallocated, mode=self.mode)

    # --- malloc / free ----------------------------------------------------------------------
    def malloc(self, key: int, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"malloc of a negative size ({nbytes}) for key {key}")
        if key in self._live:
            raise ValueError(f"malloc: key {key} is already allocated; free it first")
        if nbytes == 0:  # CUDACachingAllocator::allocate returns nullptr without calling malloc
            self._live[key] = 0
            return
        self._num_allocs += 1
        if self.mode == "exact":
            self._live[key] = nbytes
            self._allocated += nbytes
            self._reserved += nbytes
            self._requested += nbytes
            self._bump()
            return
        # round_size, inlined (this is the replay's hot path)
        size = K_MIN_BLOCK_SIZE if nbytes < K_MIN_BLOCK_SIZE else (nbytes + K_MIN_BLOCK_SIZE - 1) // K_MIN_BLOCK_SIZE * K_MIN_BLOCK_SIZE
        small = size <= K_SMALL_SIZE
        block = self._get_free_block(small, size)
        if block is None:
            block = self._alloc_segment(small, size)
        remaining = block.size - size  # _should_split, inlined
        if (remaining >= K_MIN_BLOCK_SIZE) if small else (size < self.max_split_size and remaining > K_SMALL_SIZE):
            rest = _Block(block.addr + size, remaining, small, block.segment)
            nxt = block.next
            rest.prev, rest.next = block, nxt
            if nxt is not None:
                nxt.prev = rest
            block.next = rest
            block.size = size
            k = (remaining, rest.addr)  # _insert_free, inlined
            bisect.insort(self._pools[small], k)
            self._free_blocks[k] = rest
        block.allocated = True
        block.requested = nbytes
        self._live[key] = block
        self._allocated += block.size
        self._requested += nbytes
        # _bump for the two counters a malloc from the cache changes (a new segment bumped the rest)
        if self._allocated > self._max_allocated:
            self._max_allocated = self._allocated
        if self._requested > self._max_requested:
            self._max_requested = self._requested

    def free(self, key: int) -> None:
        try:
            block = self._live.pop(key)
        except KeyError:
            raise ValueError(f"free: key {key} is not allocated") from None
        if isinstance(block, int):  # zero-byte or exact mode
            self._allocated -= block
            self._reserved -= block
            self._requested -= block
            return
        block.allocated = False
        self._allocated -= block.size
        self._requested -= block.requested
        block.requested = 0
        for other in (block.prev, block.next):  # try_merge_blocks(block, prev), then next
            if other is not None and not other.allocated:
                self._remove_free(other)
                if other is block.prev:
                    block.addr = other.addr
                    block.prev = other.prev
                    if block.prev is not None:
                        block.prev.next = block
                else:
                    block.next = other.next
                    if block.next is not None:
                        block.next.prev = block
                block.size += other.size
        self._insert_free(block)

    # --- internals --------------------------------------------------------------------------
    def _bump(self) -> None:
        if self._allocated > self._max_allocated:
            self._max_allocated = self._allocated
        if self._reserved > self._max_reserved:
            self._max_reserved = self._reserved
        if self._requested > self._max_requested:
            self._max_requested = self._requested
        if len(self._segments) > self._max_segments:
            self._max_segments = len(self._segments)

    def _insert_free(self, block: _Block) -> None:
        k = (block.size, block.addr)
        bisect.insort(self._pools[block.small], k)
        self._free_blocks[k] = block

    def _remove_free(self, block: _Block) -> None:
        k = (block.size, block.addr)
        pool = self._pools[block.small]
        i = bisect.bisect_left(pool, k)
        if i == len(pool) or pool[i] != k:
            raise AssertionError(f"allocator model: free block {k} missing from its pool")
        del pool[i]
        del self._free_blocks[k]

    def _get_free_block(self, small: bool, size: int) -> _Block | None:
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (size, -1))
        if i == len(pool):
            return None
        if self.max_split_size != UNLIMITED:
            bsize = pool[i][0]
            if size < self.max_split_size and bsize >= self.max_split_size:
                return None  # "Do not return an oversized block for a large request"
            if size >= self.max_split_size and bsize >= size + self.max_non_split_rounding_size:
                return None  # "Allow oversized block size to be rounded up but within a limit"
        return self._free_blocks.pop(pool.pop(i))

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self.max_split_size and remaining > K_SMALL_SIZE

    def _alloc_segment(self, small: bool, size: int) -> _Block:
        seg_size = allocation_size(size)
        if self.memory_limit_bytes is not None and self._reserved + seg_size > self.memory_limit_bytes:
            released = self._release_available_cached_blocks(small, size)
            if not released or self._reserved + seg_size > self.memory_limit_bytes:
                self._release_cached_blocks()
                self._num_retries += 1
            if self._reserved + seg_size > self.memory_limit_bytes:
                raise AllocatorOutOfMemory(
                    f"modelled CUDA OOM: tried to allocate {seg_size / MIB:.2f} MiB with "
                    f"{self._reserved / MIB:.2f} MiB reserved and {self._allocated / MIB:.2f} MiB allocated "
                    f"under a limit of {self.memory_limit_bytes / MIB:.2f} MiB")
            # found room after releasing: best fit again is not needed (the released blocks were free
            # and unsplit, so none could hold the request, or get_free_block would have found it)
        seg = self._next_segment
        self._next_segment += 1
        block = _Block(self._next_addr, seg_size, small, seg)
        self._next_addr += seg_size
        self._segments[seg] = seg_size
        self._reserved += seg_size
        self._num_seg_allocs += 1
        self._bump()
        return block

    def _release_block(self, block: _Block) -> None:
        self._remove_free(block)
        del self._segments[block.segment]
        self._reserved -= block.size
        self._num_seg_frees += 1

    def _release_available_cached_blocks(self, small: bool, size: int) -> bool:
        """Free oversize cached segments (only with max_split_size set), enough for `size`."""
        if self.max_split_size == UNLIMITED:
            return False
        key_size = max(size, self.max_split_size)
        pool = self._pools[small]
        i = bisect.bisect_left(pool, (key_size, -1))
        # (a free piece of a split segment cannot be returned to the device on its own: the model
        # skips such pieces, which only a max_split_size below kLargeBuffer can produce)
        if i < len(pool) and not self._free_blocks[pool[i]].is_split():
            self._release_block(self._free_blocks[pool[i]])
            return True
        released = 0
        j = len(pool) - 1
        while j >= 0 and released < key_size and pool[j][0] >= self.max_split_size:
            blk = self._free_blocks[pool[j]]
            if not blk.is_split():
                released += blk.size
                self._release_block(blk)
            j -= 1
        return released >= key_size

    def _release_cached_blocks(self) -> None:
        """`release_cached_blocks`: every cached block that is a whole (unsplit) segment."""
        for small in (False, True):
            for k in list(self._pools[small]):
                blk = self._free_blocks[k]
                if not blk.is_split():
                    self._release_block(blk)


def replay(events: Iterable[tuple[str, int, int]], *, preallocate: Iterable[int] = (),
           mode: str = "caching", **model_kwargs) -> AllocatorStats:
    """Run ("alloc" | "free", key, nbytes) events in order through a fresh CachingAllocatorModel.

    `preallocate`: byte sizes allocated first and kept (e.g. the cuBLAS workspaces, which PyTorch
    allocates through the caching allocator at the first matmul and never frees). A free of a
    key the stream never allocated (a storage counted in before recording started) is an error.
    """
    model = CachingAllocatorModel(mode=mode, **model_kwargs)
    pre = 0
    for i, nbytes in enumerate(preallocate):
        model.malloc(-(i + 1), int(nbytes))  # negative keys: never an id() of a Python object
        pre += int(nbytes)
    model._preallocated = pre
    for kind, key, nbytes in events:
        if kind == "alloc":
            model.malloc(key, nbytes)
        elif kind == "free":
            model.free(key)
        else:
            raise ValueError(f"replay: event kind must be 'alloc' or 'free', got {kind!r}")
    return model.stats()
