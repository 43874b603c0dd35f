import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one intra-op thread avoids spin-waiting (memory figures do not depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
