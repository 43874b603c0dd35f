"""Shared pytest set-up: the `gpu` marker skips without CUDA; the oracle fixture gives the reference cases."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    env = os.environ.get("ENACT_BENCH_SHARED")
    if env:
        return Path(env)
    return REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Every test runs with one intra-op thread: the tests use tiny models, and on a 2-core machine
    shared with other jobs two OpenMP threads spin against each other (steps 5-15x slower).
    Memory figures do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu); none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


SMALL_CASES_FILE = REPO / "tests" / "enact" / "reference" / "enact_small_cases.pt"
SMALL_CASES = ("s3_b2_10x13", "s5_b3_8x11", "s3_b1_6x7")  # see tests/enact/reference/README.md
SHARED_CASE = "shared-25x34"


@pytest.fixture(scope="session")
def _small_cases():
    return torch.load(SMALL_CASES_FILE, weights_only=True)["cases"]


@pytest.fixture(scope="session", params=(*SMALL_CASES, SHARED_CASE))
def oracle_case(request, _small_cases):
    """A case computed by the released ENACT code (GSavathrakis/ENACT's ClustAttn and encoder
    layer): the small committed ones (tests/enact/reference/), which run everywhere, and, as an
    extra check where it exists, the larger shared one (../shared/oracle/enact_reference_case.pt,
    B=2, 25x34, d_model 256)."""
    if request.param != SHARED_CASE:
        return _small_cases[request.param]
    path = _shared_dir() / "oracle" / "enact_reference_case.pt"
    if not path.exists():
        pytest.skip(f"extra check only: the larger shared case is not at {path} (set ENACT_BENCH_SHARED); "
                    "the committed small cases ran")
    return torch.load(path, weights_only=True)
