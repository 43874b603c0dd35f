"""Case and its id (suite/case.py): stable, short, readable, and blind to how long or where a case runs."""
from __future__ import annotations

import dataclasses

import pytest

from enact_bench.suite.case import NOT_IN_ID, Case
from enact_bench.suite.load import load_suite


def test_case_id_is_stable_and_ignores_run_length():
    a = Case(detector="detr_tiny", image_size=(64, 96), iters=3)
    b = Case(detector="detr_tiny", image_size=(64, 96), iters=50, warmup=5, device="cuda")
    assert a.case_id == b.case_id == "detr_tiny-base-train-b2-64x96"
    assert Case(detector="detr_tiny", image_size=(64, 96), seed=1).case_id.endswith("-seed=1")
    assert Case.from_dict(a.to_dict()) == a


def test_case_ids_are_short_readable_and_stable():
    toy = load_suite("toy-detr").cases
    assert max(len(c.case_id) for c in toy) <= 90
    # the same options give the same id in every run (a resume and the baseline key on it)
    assert toy[0].case_id == "detr_tiny-base-infer-b1-toy-opts=f0014e2f-num_classes=2-evaluate=coco"
    assert load_suite("toy-detr").cases[0].case_id == toy[0].case_id
    other = Case(detector="detr_tiny", data="toy", data_options={**toy[0].data_options, "images": 33})
    assert other.case_id != Case(detector="detr_tiny", data="toy", data_options=toy[0].data_options).case_id
    # key order in the suite file does not matter
    a = Case(detector="detr_tiny", data="toy", data_options={"images": 8, "categories": 1})
    b = Case(detector="detr_tiny", data="toy", data_options={"categories": 1, "images": 8})
    assert a.case_id == b.case_id


@pytest.mark.parametrize("key, value", [("iters", 50), ("warmup", 7), ("device", "cuda:1"), ("flops", False),
                                        ("cpu_threads", 3), ("trust_checkpoint", True)])
def test_keys_that_say_how_long_or_where_leave_the_id_alone(key, value):
    assert key in NOT_IN_ID
    case = Case(detector="detr_tiny", image_size=(64, 96))
    other = dataclasses.replace(case, **{key: value})
    assert other != case and other.case_id == case.case_id
