"""Detector tests run with one intra-op thread: on the shared 2-core CI machine, two threads
contending with other processes made the tiny models' convolutions about 10x slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
