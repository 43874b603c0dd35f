"""The caching-allocator model on hand-computed traces (expected values worked out from the rules
of c10/cuda/CUDACachingAllocator.cpp written in enact_bench/predict/allocator.py)."""
import pytest

from enact_bench.predict.allocator import (K_LARGE_BUFFER, K_SMALL_BUFFER, AllocatorOutOfMemory,
                                           CachingAllocatorModel, allocation_size, replay, round_size)

KIB, MIB = 1024, 2**20


def test_round_size_to_512_bytes():
    assert round_size(1) == 512
    assert round_size(512) == 512
    assert round_size(513) == 1024
    assert round_size(4 * 1000) == 4096  # 4,000 B -> 8 blocks of 512
    assert round_size(0) == 512  # round_size itself; malloc never calls it for 0 bytes


def test_segment_sizes():
    assert allocation_size(512) == K_SMALL_BUFFER  # <= 1 MiB: 2 MiB segment
    assert allocation_size(MIB) == K_SMALL_BUFFER
    assert allocation_size(MIB + 512) == K_LARGE_BUFFER  # 1-10 MiB: 20 MiB segment
    assert allocation_size(10 * MIB - 512) == K_LARGE_BUFFER
    assert allocation_size(10 * MIB) == 10 * MIB  # own segment, rounded up to 2 MiB
    assert allocation_size(11 * MIB) == 12 * MIB


def test_small_requests_share_a_2mib_segment_and_are_reused():
    m = CachingAllocatorModel()
    m.malloc(1, 100)  # 512 B block split from a new 2 MiB segment
    m.malloc(2, 1000)  # 1024 B from the remainder
    assert (m.allocated_bytes, m.reserved_bytes, m.requested_bytes) == (1536, 2 * MIB, 1100)
    m.free(1)
    m.malloc(3, 300)  # best fit: the freed 512 B block, no new segment
    assert (m.allocated_bytes, m.reserved_bytes, m.segments) == (1536, 2 * MIB, 1)
    assert m.stats().num_segment_allocs == 1


def test_large_block_is_split_and_the_remainder_reused():
    m = CachingAllocatorModel()
    m.malloc(1, 3 * MIB)  # 20 MiB segment; 17 MiB remainder (> 1 MiB) split off
    assert (m.allocated_bytes, m.reserved_bytes) == (3 * MIB, 20 * MIB)
    m.malloc(2, 5 * MIB)  # from the 17 MiB remainder, which splits again (12 MiB left)
    m.malloc(3, 12 * MIB)  # >= 10 MiB but the cached 12 MiB block fits exactly: reused
    assert (m.allocated_bytes, m.reserved_bytes, m.segments) == (20 * MIB, 20 * MIB, 1)


def test_block_not_split_counts_whole_as_allocated():
    m = CachingAllocatorModel()
    m.malloc(1, 3 * MIB)
    m.malloc(2, 16 * MIB + 512 * KIB)  # takes the 17 MiB remainder: 512 KiB left <= 1 MiB, not split
    assert m.allocated_bytes == 3 * MIB + 17 * MIB  # the whole 17 MiB block counts
    assert m.requested_bytes == 3 * MIB + 16 * MIB + 512 * KIB
    m.free(2)
    assert m.allocated_bytes == 3 * MIB


def test_own_segment_rounded_to_2mib_and_its_odd_tail_counts():
    m = CachingAllocatorModel()
    m.malloc(1, 19 * MIB + 1)  # rounded 19 MiB + 512 B -> own 20 MiB segment, tail < 1 MiB kept
    assert (m.allocated_bytes, m.reserved_bytes) == (20 * MIB, 20 * MIB)


def test_segment_growth():
    m = CachingAllocatorModel()
    for k in range(4):  # 4 x 6 MiB: the first 20 MiB segment holds three (18 MiB; 2 MiB left, split)
        m.malloc(k, 6 * MIB)
    assert (m.reserved_bytes, m.segments) == (40 * MIB, 2)
    m.malloc(10, 30 * MIB)  # > 10 MiB: a segment of its own
    assert (m.reserved_bytes, m.segments) == (70 * MIB, 3)
    m.malloc(11, 2 * MIB)  # the 2 MiB remainder of segment 1 fits exactly (best fit)
    assert m.reserved_bytes == 70 * MIB


def test_freed_neighbours_merge():
    m = CachingAllocatorModel()
    m.malloc(1, 4 * MIB)
    m.malloc(2, 4 * MIB)
    m.malloc(3, 4 * MIB)  # one 20 MiB segment: [4][4][4][8 free]
    m.free(1)
    m.free(3)  # merges with the 8 MiB tail -> [4 free][4][12 free]
    m.malloc(4, 10 * MIB)  # fits the merged 12 MiB block (2 MiB > 1 MiB split off), no new segment
    assert m.segments == 1
    m.free(2)
    m.free(4)  # everything merges back into one 20 MiB free block
    # [4 free][4][10][2 free] -> freeing 2 and 4 merges all three neighbours into 20 MiB
    m.malloc(5, 19 * MIB + 512 * KIB)  # needs the whole segment: reused, 512 KiB tail not split
    assert (m.segments, m.allocated_bytes) == (1, 20 * MIB)


def test_max_allocated_and_max_reserved_peak_at_different_times():
    m = CachingAllocatorModel()
    m.malloc(1, 12 * MIB)  # own 12 MiB segment
    m.free(1)
    m.malloc(2, 4 * MIB)  # splits the cached 12 MiB block (8 MiB > 1 MiB left)
    m.malloc(3, 9 * MIB)  # 8 MiB left is too small: a new 20 MiB segment
    st = m.stats()
    assert st.alloc_peak_bytes == 13 * MIB  # 4 + 9, at the end
    assert st.reserved_peak_bytes == 32 * MIB  # 12 + 20
    assert st.requested_peak_bytes == 13 * MIB
    assert st.segments_peak == 2


def test_zero_byte_allocations_cost_nothing():
    st = replay([("alloc", 1, 0), ("alloc", 2, 100), ("free", 1, 0), ("free", 2, 100)])
    assert (st.alloc_peak_bytes, st.reserved_peak_bytes, st.requested_peak_bytes) == (512, 2 * MIB, 100)


def test_exact_mode_is_a_plain_counter():
    ev = [("alloc", 1, 100), ("alloc", 2, 3 * MIB + 1), ("free", 1, 100), ("alloc", 3, 7)]
    st = replay(ev, mode="exact")
    assert st.alloc_peak_bytes == st.reserved_peak_bytes == st.requested_peak_bytes == 3 * MIB + 101


def test_preallocated_workspaces_come_first_and_stay():
    st = replay([("alloc", 1, MIB + 512)], preallocate=[32 * MIB])
    assert st.reserved_peak_bytes == 32 * MIB + 20 * MIB
    assert st.allocated_end_bytes == 32 * MIB + MIB + 512
    assert st.preallocated_bytes == 32 * MIB


def test_oom_path_releases_unsplit_cached_segments_then_fails():
    m = CachingAllocatorModel(memory_limit_bytes=40 * MIB)
    m.malloc(1, 24 * MIB)
    m.free(1)  # a cached, unsplit 24 MiB segment
    m.malloc(2, 30 * MIB)  # 24 + 30 > 40: release the cached segment, retry
    st = m.stats()
    assert (st.reserved_end_bytes, st.num_segment_frees, st.num_alloc_retries) == (30 * MIB, 1, 1)
    with pytest.raises(AllocatorOutOfMemory, match="modelled CUDA OOM"):
        m.malloc(3, 12 * MIB)


def test_max_split_size_keeps_oversize_blocks_whole():
    m = CachingAllocatorModel(max_split_size=32 * MIB)
    m.malloc(1, 40 * MIB)
    m.free(1)
    m.malloc(2, 4 * MIB)  # may not take the oversize 40 MiB block: a new 20 MiB segment
    assert m.reserved_bytes == 60 * MIB
    m.malloc(3, 36 * MIB)  # >= max_split_size, and 40 < 36 + 20: takes the 40 MiB block whole
    assert (m.reserved_bytes, m.allocated_bytes) == (60 * MIB, 44 * MIB)


def test_bad_input_says_what_to_fix():
    m = CachingAllocatorModel()
    m.malloc(1, 10)
    with pytest.raises(ValueError, match="already allocated"):
        m.malloc(1, 10)
    with pytest.raises(ValueError, match="not allocated"):
        m.free(2)
    with pytest.raises(ValueError, match="'alloc' or 'free'"):
        replay([("malloc", 1, 10)])


def test_oom_path_with_max_split_size_frees_an_oversize_block_first():
    m = CachingAllocatorModel(max_split_size=32 * MIB, memory_limit_bytes=70 * MIB)
    m.malloc(1, 40 * MIB)
    m.free(1)  # cached oversize block
    m.malloc(2, 4 * MIB)  # not from the oversize block: a new 20 MiB segment (60 MiB reserved)
    m.malloc(3, 30 * MIB)  # 60 + 30 > 70: release_available_cached_blocks frees the 40 MiB block
    st = m.stats()
    assert (st.reserved_end_bytes, st.num_segment_frees, st.num_alloc_retries) == (50 * MIB, 1, 0)
