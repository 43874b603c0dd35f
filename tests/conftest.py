"""Shared pytest set-up: the `gpu` marker skips without CUDA; the oracle fixture finds shared/."""
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


@pytest.fixture(scope="session")
def oracle_case():
    """The case computed by the released ENACT code (../shared/oracle/enact_reference_case.pt)."""
    path = _shared_dir() / "oracle" / "enact_reference_case.pt"
    if not path.exists():
        pytest.skip(f"ENACT oracle not found at {path}: set ENACT_BENCH_SHARED to the shared/ folder")
    return torch.load(path, weights_only=False)
