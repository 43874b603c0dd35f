"""Progress of a plan, for whoever shows it: `report(message)` calls the reporter a caller set
with `reporting(fn)` (the CLI: a status line on a terminal, one stderr line per message when
piped). Only the process that set the reporter reports: the plan's forked workers inherit it,
and their messages reach the parent through their results instead (predict/pool.py)."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable

_STATE: dict = {"fn": None, "pid": None, "t0": 0.0}


def report(message: str) -> None:
    """Pass `message` (with the seconds since `reporting` began) to the reporter, if any, from
    the process that set it."""
    fn = _STATE["fn"]
    if fn is not None and os.getpid() == _STATE["pid"]:
        fn(f"[{time.perf_counter() - _STATE['t0']:5.1f} s] {message}")


@contextmanager
def reporting(fn: Callable[[str], None] | None):
    """Within the block, `report` calls `fn` (None: reports go nowhere)."""
    before = dict(_STATE)
    _STATE.update(fn=fn, pid=os.getpid(), t0=time.perf_counter())
    try:
        yield
    finally:
        _STATE.update(before)
