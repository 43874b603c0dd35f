"""The one "HxW" reader (enact_bench/sizes.py) and its two users, the suite checks and `plan`."""
from __future__ import annotations

import pytest

from enact_bench.errors import UserInputError
from enact_bench.predict.plan import parse_hw
from enact_bench.sizes import MIN_PLAN_SIDE_PX, split_hw
from enact_bench.suite.checks import parse_image_size

GOOD = {"800x1333": (800, 1333), " 64 X 96 ": (64, 96), "\t33x40\n": (33, 40), "0x5": (0, 5)}
BAD = ["800", "800x", "x800", "800x1333x3", "-8x8", "+8x8", "8.5x8", "8 0x8", "²x3", "eight x eight", ""]


@pytest.mark.parametrize("text, hw", GOOD.items())
def test_split_hw_reads_height_then_width(text, hw):
    assert split_hw(text) == hw


@pytest.mark.parametrize("text", BAD)
def test_split_hw_rejects_what_is_not_two_numbers_around_an_x(text):
    assert split_hw(text) is None


@pytest.mark.parametrize("text", [*GOOD, *BAD])
def test_the_suite_and_plan_accept_the_same_texts(text):
    """Each caller keeps its own limit (suite: >= 1, plan: >= 32), so compare on the grammar."""
    def suite_reads(t):
        try:
            return parse_image_size(t)[0]
        except ValueError as e:
            return "too small" if ">= 1 pixel" in str(e) else None

    def plan_reads(t):
        try:
            return parse_hw(t)
        except UserInputError as e:
            return None if "expected HxW" in str(e) else "too small"

    hw = split_hw(text)
    assert suite_reads(text) == (hw if hw is None or min(hw) >= 1 else "too small")
    assert plan_reads(text) == (hw if hw is None or min(hw) >= MIN_PLAN_SIDE_PX else "too small")


def test_plan_names_its_limits_in_its_own_words():
    with pytest.raises(UserInputError, match=r"--image-size '²x3': expected HxW \(e\.g\. 800x1333\) or 'run-worst'"):
        parse_hw("²x3")  # a superscript is not a digit: an error, not a crash in int()
    with pytest.raises(UserInputError, match=r"--image-size '31x800': both sides must be >= 32 pixels"):
        parse_hw("31x800")
    assert parse_hw("32X32") == (32, 32)
