"""The one reader of an image size written "HxW" (plain Python, no torch).

The suite checks (suite/checks.py, which also take [H, W] and "coco") and `enact-bench plan`
(predict/plan.py, which also takes "worst") both read the text form here and keep their own
messages and limits.
"""
from __future__ import annotations

import re

_HW = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")  # "800x1333", " 800 X 1333 "; digits only, no sign


def split_hw(text: str) -> tuple[int, int] | None:
    """"HxW" -> (H, W), sides as written (0 included: the callers set their own minimum);
    None when the text is not of that form."""
    m = _HW.fullmatch(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2))


# `enact-bench plan` and a suite's [plan]: a side under the backbones' stride leaves the encoder
# no feature map worth estimating
MIN_PLAN_SIDE_PX = 32
