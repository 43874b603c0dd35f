"""Checks a run makes before any work (the estimate, the first case): a device the machine does
not have, and a checkpoint that does not fit its detector, are one-line errors up front instead of
a skipped or failed case after minutes of work."""
from __future__ import annotations

import dataclasses
import json

from enact_bench.errors import UserInputError
from enact_bench.suite import Case, Suite


def check_devices(suite: Suite, device_flag: str | None = None) -> None:
    """Every case asks for CUDA and there is none: nothing could be measured, so say so now.
    (A suite that mixes CPU and CUDA cases still runs; its CUDA cases are skipped, with a reason.)"""
    wanted = [c for c in suite.cases if c.device.startswith("cuda")]
    if not wanted or len(wanted) < len(suite.cases):
        return
    import torch

    if torch.cuda.is_available():
        return
    where = f"--device {device_flag}" if device_flag else f"suite {suite.name!r} (device = {wanted[0].device!r})"
    raise UserInputError(f"{where}: no CUDA device is available here (torch {torch.__version__}); "
                         "run on a machine with a GPU, or pass --device cpu (or auto)")


def _variant(case: Case) -> str:
    return f"{case.detector}{'+enact' if case.enact else ''}"


def check_checkpoints(suite: Suite) -> None:
    """Each distinct (model, checkpoint) of the suite once: the checkpoint's keys and shapes
    against the detector built on the meta device (no memory, no initialisation), so that a
    checkpoint of another architecture fails here rather than in every case that loads it."""
    seen: set[str] = set()
    for case in suite.cases:
        if not case.checkpoint:
            continue
        key = json.dumps([case.detector, case.enact, case.enact_config, case.overrides, case.num_classes,
                          case.checkpoint, case.trust_checkpoint], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        _check_checkpoint(case)


def _check_checkpoint(case: Case) -> None:
    import torch

    from enact_bench.detectors.checkpoint import CheckpointError, compare_state_dict, read_state_dict
    from enact_bench.run.steps import build_model

    bare = dataclasses.replace(case, checkpoint=None)
    try:
        with torch.device("meta"):
            model = build_model(bare)
    except Exception:  # noqa: BLE001 -- a detector that cannot be built on meta: build it for real
        model = build_model(bare)
    try:
        state = read_state_dict(case.checkpoint, trust=case.trust_checkpoint)
    except (CheckpointError, TypeError, FileNotFoundError) as e:
        raise UserInputError(f"checkpoint for {_variant(case)}: {e}") from None
    report = compare_state_dict(model, state)
    if not report.ok:
        raise UserInputError(f"checkpoint {case.checkpoint} does not fit {_variant(case)} "
                             f"(its keys and shapes against the model): {report.summary()}")


def preflight(suite: Suite, device_flag: str | None = None) -> None:
    check_devices(suite, device_flag)
    check_checkpoints(suite)
