"""The checks of a suite's values: one small validator per case key (VALIDATORS), the checks
that span several keys of one case, and the tables of valid choices.

A validator takes a value as the TOML (or `--set`) gives it and returns it normalised, or raises
BadValue (about the whole value) or BadItem (about one item of a list); `check_value` adds the
file and the key, so every message reads `FILE: KEY = VALUE: expected ...` or `FILE: KEY: ...`.
The registries (detectors, data sources, evaluations, GPUs, EnactConfig) are imported inside the
validators that need them: loading this module imports neither torch nor a registry.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from enact_bench.choices import DTYPES, MODES, TARGETS
from enact_bench.errors import SuiteError
from enact_bench.sizes import split_hw

# the choice tables only the case keys use (MODES, DTYPES and TARGETS are shared: enact_bench/choices.py)
SIZE_DISTS = ("coco",)
LAUNCHERS = ("process", "torchrun")


class BadValue(ValueError):
    """A validator's verdict on a whole value: the message's text after `FILE: KEY = VALUE: `."""


class BadItem(ValueError):
    """A validator's verdict on one item of a list value: the message's text after `FILE: KEY: `."""


Validator = Callable[[Any], Any]  # value as written -> normalised value; raises BadValue / BadItem


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_image_size(value: Any) -> tuple[tuple[int, int] | None, str | None]:
    """"HxW", [H, W] or "coco" -> (size, dist). Raises ValueError with what was expected."""
    expected = 'expected "HxW" (e.g. "800x1333"), [H, W] or "coco"'
    if isinstance(value, str):
        if value in SIZE_DISTS:
            return None, value
        hw = split_hw(value)
        if hw is None:
            raise ValueError(expected)
        h, w = hw
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) for v in value):
        h, w = value
    else:
        raise ValueError(expected)
    if h < 1 or w < 1:
        raise ValueError('expected image sides >= 1 pixel, e.g. "800x1333"')
    return (h, w), None


# ---------------------------------------------------------------------------------------
# the validators, and the table that names one per key
# ---------------------------------------------------------------------------------------
def _expected(what: str) -> BadValue:
    return BadValue(f"expected {what}")


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false")
    return value


def _integer(minimum: int) -> Validator:
    def check(value: Any) -> int:
        if not is_int(value) or value < minimum:
            raise _expected(f"an integer >= {minimum}")
        return value
    return check


def _one_of(choices: tuple[str, ...]) -> Validator:
    def check(value: Any) -> str:
        if value not in choices:
            raise _expected("one of " + ", ".join(choices))
        return value
    return check


def _matching(pattern: str, what: str) -> Validator:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise _expected(what)
        return value
    return check


def _table(what: str) -> Validator:
    def check(value: Any) -> dict:
        if not isinstance(value, dict):
            raise _expected(what)
        return dict(value)
    return check


def known_detectors() -> list[str]:
    """The registered detectors. A registry that fails to import is an error, never "any name"."""
    from enact_bench.detectors import list_detectors

    return list(list_detectors())


def _detector(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("a detector name (string)")
    known = known_detectors()
    if value not in known:
        raise _expected("one of " + ", ".join(sorted(known)))
    return value


def _image_size(value: Any) -> tuple[tuple[int, int] | None, str | None]:
    try:
        return parse_image_size(value)
    except ValueError as e:
        raise _expected(str(e).removeprefix("expected ")) from None


def _clip_max_norm(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise _expected("a number >= 0 (0 turns clipping off)")
    return float(value)


def _data(value: Any) -> str:
    from enact_bench.data.sources import list_data_sources

    if value not in list_data_sources():
        raise _expected("one of " + ", ".join(list_data_sources()))
    return value


def _enact_config(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _expected('a table of EnactConfig fields, e.g. {sigma = 3.0, backend = "sdpa"}')
    from enact import EnactConfig

    try:
        EnactConfig(**value)
    except (TypeError, ValueError) as e:
        raise BadValue(str(e)) from None
    return dict(value)


def _gpu(value: Any) -> str:
    """A GPU name or alias -> the GPU table's name (predict/gpus.py)."""
    from enact_bench.predict.gpus import get_gpu

    try:
        return get_gpu(value if isinstance(value, str) else str(value)).name
    except ValueError as e:
        raise BadValue(str(e)) from None


def _checkpoint(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _expected("a path to a checkpoint file (string)")
    return value


def _evaluations(value: Any) -> tuple[str, ...]:
    """One evaluation name or a list of them -> the tuple of names, each registered."""
    from enact_bench.evaluate.registry import list_evaluations

    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise _expected("a list of evaluation names")
    known = list_evaluations()
    for n in names:
        if n not in known:
            raise BadItem(f"unknown evaluation {n!r}; expected one of {', '.join(known) or '(none registered)'}")
    return tuple(names)


_AT_LEAST_0, _AT_LEAST_1 = _integer(0), _integer(1)

# Every case key, in Case's field order (the order `valid keys:` lists them in).
VALIDATORS: dict[str, Validator] = {
    "detector": _detector,
    "enact": _boolean,
    "enact_config": _enact_config,
    "mode": _one_of(MODES),
    "device": _matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"),
    "dtype": _one_of(DTYPES),
    "batch_size": _AT_LEAST_1,
    "image_size": _image_size,
    "data": _data,
    "data_options": _table("a table, e.g. {key = value}"),
    "iters": _AT_LEAST_1,
    "warmup": _AT_LEAST_1,
    "seed": _AT_LEAST_0,
    "overrides": _table("a table, e.g. {key = value}"),
    "checkpoint": _checkpoint,
    "trust_checkpoint": _boolean,
    "num_classes": _AT_LEAST_1,
    "clip_max_norm": _clip_max_norm,
    "tf32": _boolean,
    "cudnn_benchmark": _boolean,
    "flops": _boolean,
    "evaluate": _evaluations,
    "cpu_threads": _AT_LEAST_1,
    "fake": _boolean,
    "ddp": _boolean,
    "launcher": _one_of(LAUNCHERS),
    "nproc": _AT_LEAST_1,
    "nnodes": _AT_LEAST_1,
    "node_rank": _AT_LEAST_0,
    "rdzv_endpoint": _matching(r"[^\s:]+:\d+", '"host:port" of node 0 (torchrun --rdzv-endpoint)'),
    "target": _one_of(TARGETS),
    "gpu": _gpu,
}


def check_value(key: str, value: Any, where: str) -> Any:
    """The value of one case key, normalised; a SuiteError naming `where` (the file) and the key."""
    validator = VALIDATORS.get(key)
    if validator is None:
        raise SuiteError(f"{where}: unknown key {key!r}; valid keys: {', '.join(VALIDATORS)}")
    try:
        return validator(value)
    except BadValue as e:
        raise SuiteError(f"{where}: {key} = {value!r}: {e}") from None
    except BadItem as e:
        raise SuiteError(f"{where}: {key}: {e}") from None


# ---------------------------------------------------------------------------------------
# checks across the keys of one case (after each key's own check)
# ---------------------------------------------------------------------------------------
def check_checkpoint_file(path: str | os.PathLike, what: str) -> None:
    """A checkpoint that is missing or is not a torch file fails at load, not in the case."""
    from enact_bench.detectors.checkpoint import looks_like_torch_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise SuiteError(f"{what}: file not found")
    if not looks_like_torch_file(p):
        raise SuiteError(f"{what}: not a PyTorch checkpoint: {p} (expected a file written by torch.save)")


def check_case_keys(kw: dict[str, Any], where: str) -> None:
    """The checked keys of one case agree: data_options with the data source, a size for
    synthetic data, overrides with the detector, evaluations with the data, and a fixed
    cluster size for a fake ENACT case."""
    from enact_bench.data.sources import get_data_source

    spec = get_data_source(kw.get("data", "synthetic"))
    for opt in kw.get("data_options", {}):
        if opt not in spec.options:
            raise SuiteError(f"{where}: data_options: unknown key {opt!r} for data {spec.name!r}; "
                             f"valid keys: {', '.join(spec.options) or '(none)'}")
    if spec.name == "synthetic" and "image_size" not in kw:
        raise SuiteError(f'{where}: synthetic data needs image_size ("HxW", [H, W] or "coco")')
    _check_overrides(kw["detector"], kw.get("overrides", {}), where)
    _check_evaluations(kw.get("evaluate", ()), spec.name, where)
    if kw.get("fake") and kw.get("enact") and (kw.get("enact_config") or {}).get("cluster_size") is None:
        raise SuiteError(f"{where}: fake = true with ENACT needs a fixed cluster size (data-dependent shapes "
                         f"cannot be faked): set enact_config = {{cluster_size = 6}} in the suite, or pass "
                         f"--set enact_config.cluster_size=6")


def _check_overrides(detector: str, overrides: dict, where: str) -> None:
    """Overrides the detector does not take are errors now, not after the suite started."""
    from enact_bench.detectors import get_spec

    valid = get_spec(detector).overrides
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise SuiteError(f"{where}: overrides: unknown key(s) {', '.join(map(repr, unknown))} for detector "
                         f"{detector!r}; valid keys: {', '.join(valid)}")


def _check_evaluations(names: tuple[str, ...], data: str, where: str) -> None:
    """An evaluation that needs other data (EvaluationSpec.data) fails at load, not after measuring."""
    from enact_bench.evaluate.registry import get_evaluation

    for name in names:
        needs = get_evaluation(name).data
        if needs is not None and data not in needs:
            raise SuiteError(f"{where}: evaluate = [{name!r}] needs data = {' or '.join(map(repr, needs))}; "
                             f"this case has data = {data!r} (drop the evaluation or change data)")
