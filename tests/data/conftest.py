"""A toy COCO dataset shared by the data tests (written once per session, a few seconds)."""
from __future__ import annotations

import pytest

from enact_bench.data.toy_coco import make_toy_coco


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy_coco")
    make_toy_coco(root, images=12, seed=3, min_side_px=96, max_side_px=160)
    return root
