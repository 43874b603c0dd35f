import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from enact_bench.instrument.live_tensors import LiveTensorTracker


def test_peak_to_the_byte():
    with LiveTensorTracker() as t:
        a = torch.empty(1024, 1024)  # 4,194,304 B
        b = torch.empty(256, dtype=torch.float64)  # 2,048 B
        del a
        c = torch.empty(100)  # 400 B
    assert t.peak_bytes - t.start_bytes == 4_194_304 + 2_048
    assert t.end_bytes - t.start_bytes == 2_048 + 400
    del b, c


def test_existing_tensors_counted_and_views_not_double_counted():
    w = torch.zeros(1000, 250)  # 1,000,000 B alive before the block
    with LiveTensorTracker() as t:
        v = w.view(250, 1000)  # a view: no new storage
        v.add_(1)  # in place: no new storage
    assert t.start_bytes >= 1_000_000
    assert t.peak_bytes == t.start_bytes


def test_backward_gradients_counted():
    w = torch.randn(500, 500, requires_grad=True)
    x = torch.randn(8, 500)
    with LiveTensorTracker() as t:
        (x @ w).sum().backward()
    # the gradient (1,000,000 B) stays alive after the block
    assert t.end_bytes - t.start_bytes >= w.numel() * 4


def test_fake_tensors_measured_without_allocating():
    with FakeTensorMode():
        with LiveTensorTracker(count_existing=False) as t:
            z = torch.empty(10_000, 10_000)  # 400 MB, fake
            z2 = z * 2
            del z2
    assert t.peak_bytes == 2 * 400_000_000
    assert t.end_bytes == 400_000_000
