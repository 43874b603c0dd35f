"""Harness tests run their cases with one intra-op thread: on a 2-core machine shared with other
jobs, two OpenMP threads spin against each other and make a tiny step 5-15x slower."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
