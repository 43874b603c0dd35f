"""enact.ops against hand-computed quantities."""
import math

import pytest
import torch
import torch.nn.functional as F

from enact import ops


@pytest.mark.parametrize("sigma, first, count", [(3.0, -8.0, 17), (5.0, -14.0, 29), (2.5, -6.5, 14), (1, -2.0, 5)])
def test_gaussian_taps(sigma, first, count):
    taps = ops.gaussian_taps(sigma)
    assert taps.dtype == torch.float32 and taps.numel() == count
    x = first + torch.arange(count, dtype=torch.float64)
    expect = torch.exp(-x**2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # not renormalised
    assert torch.allclose(taps.double(), expect, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sigma", [3.0, 2.5])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_smoothing_pads_like_conv1d_same(sigma):
    e = torch.rand(3, 40)
    expect = F.conv1d(e.unsqueeze(1), ops.gaussian_taps(sigma).view(1, 1, -1), padding="same").squeeze(1)
    assert torch.allclose(ops.smooth(e, sigma), expect, atol=1e-7)
    # (K - 1) // 2 zeros on the left (6 of 13 for sigma 2.5's 14 taps): output i of an impulse
    # at position 0 is taps[left - i]
    impulse = torch.zeros(1, 20)
    impulse[0, 0] = 1.0
    taps = ops.gaussian_taps(sigma)
    left = (taps.numel() - 1) // 2
    out = ops.smooth(impulse, sigma)[0]
    assert torch.equal(out[: left + 1], taps[: left + 1].flip(0)) and (out[left + 1:] == 0).all()


def test_entropy_is_float32_base2_and_masked():
    logits = torch.zeros(2, 4, dtype=torch.bfloat16)  # uniform: p = 1/4, -p log2 p = 0.5
    e = ops.entropy_bits(logits)
    assert e.dtype == torch.float32
    assert torch.allclose(e, torch.full((2, 4), 0.5), atol=1e-6)
    valid = torch.tensor([[True, True, False, False]] * 2)
    e = ops.entropy_bits(logits, valid)
    assert torch.allclose(e[:, :2], torch.full((2, 2), 0.5), atol=1e-6) and (e[:, 2:] == 0).all()


def test_second_derivative_and_step():
    x = torch.tensor([[0.0, 1.0, 4.0, 9.0, 16.0]])
    assert torch.equal(ops.second_derivative(x), torch.tensor([[-1.0, -2.0, -2.0, -2.0, 23.0]]))
    assert torch.equal(ops.step(torch.tensor([[-1.0, 0.0, 2.0]])), torch.tensor([[False, False, True]]))


def test_runs():
    s = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert ops.run_count(s).tolist() == [3, 1]
    assert ops.mean_run_length(s).tolist() == pytest.approx([2.0, 6.0])
    # inside a valid prefix only: row 0 over 4 positions = runs [0,0],[1,1]
    assert ops.run_count(s, torch.tensor([4, 6])).tolist() == [2, 1]
    assert ops.mean_run_length(s, torch.tensor([4, 6])).tolist() == pytest.approx([2.0, 6.0])
    assert ops.mean_run_length(s).dtype == torch.float32


def test_cluster_size_rounds_half_to_even_like_python():
    assert ops.cluster_size([2.0, 3.0]) == 2  # mean 2.5 -> 2
    assert ops.cluster_size([3.0, 4.0]) == 4  # mean 3.5 -> 4
    assert ops.cluster_size([5.704698085784912, 6.296296119689941]) == 6  # the oracle case


def test_trim_bounds():
    assert ops.trim_bounds(850, 6) == (2, 141)  # r = 4: 2 front, 2 back
    assert ops.trim_bounds(850, 7) == (1, 121)  # r = 3: 1 front, 2 back
    assert ops.trim_bounds(12, 4) == (0, 3)


def test_window_pool_is_the_weighted_sum_of_each_window():
    S, B, C, L = 11, 2, 3, 3
    x, e = torch.randn(S, B, C), torch.randn(B, S)
    front, n = ops.trim_bounds(S, L)  # r = 2: front 1, 3 windows
    got = ops.window_pool(x, e, L, front, n)
    for b in range(B):
        for j in range(n):
            idx = list(range(front + j * L, front + (j + 1) * L))
            w = torch.softmax(e[b, idx], 0)
            assert torch.allclose(got[j, b], (w[:, None] * x[idx, b]).sum(0), atol=1e-6)
    # the gather form with per-image sizes gives the same for equal sizes
    index, member, window = ops.window_index(torch.tensor([1, 1]), torch.tensor([3, 3]), torch.tensor([3, 3]), 3, 3)
    assert window.all() and member.all()
    assert torch.allclose(ops.window_pool_gather(x, e, index, member, None), got, atol=1e-6)


def test_window_index_per_image():
    index, member, window = ops.window_index(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([3, 2]), 3, 3)
    assert index[0].tolist() == [[0, 1, 0], [2, 3, 0], [4, 5, 0]]  # unused member -> position 0
    assert index[1].tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    assert window.tolist() == [[True, True, True], [True, True, False]]
    assert member[0, :, 2].tolist() == [False, False, False] and member[1, 2].tolist() == [False] * 3
