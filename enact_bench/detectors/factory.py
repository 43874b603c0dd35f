"""`py:PKG.MODULE:FACTORY` and `PATH/TO/FILE.py:FACTORY`: a user's own model from a factory function.

The factory is called as `FACTORY(**overrides)` (a suite's `overrides` table, `plan --set KEY=VALUE`)
and returns an nn.Module in HF's convention or a ModelSpec (detectors/model_spec.py). Every
failure is one line: a module that does not import, a file that is not there, a missing factory,
a factory that raises (its message's first line), or one that returns something else.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from enact_bench.errors import UserInputError

from .model_spec import ModelSpec


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _import_file(path: Path, name: str):
    """Import a .py file under a module name of its own (its resolved path's hash), once per process."""
    key = f"enact_bench_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise UserInputError(f"{name}: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    sys.path.insert(0, str(path.parent))  # the file's own imports of its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- the user's code: its error, one line
        sys.modules.pop(key, None)
        raise UserInputError(f"{name}: importing {path} failed: {_first_line(e)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def find_factory(kind: str, target: str, attr: str, name: str) -> Callable:
    """The factory function of a `py:` (kind "module") or file (kind "file") source."""
    if kind == "module":
        try:
            module = importlib.import_module(target)
        except Exception as e:  # noqa: BLE001
            raise UserInputError(f"{name}: cannot import module {target!r}: {_first_line(e)}") from None
    else:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise UserInputError(f"{name}: file not found: {path}")
        module = _import_file(path, name)
    factory = getattr(module, attr, None)
    if factory is None:
        raise UserInputError(f"{name}: {target} has no {attr!r}")
    if not callable(factory):
        raise UserInputError(f"{name}: {attr} in {target} is not callable")
    return factory


def factory_parameters(factory: Callable) -> tuple[str, ...] | None:
    """The keyword names the factory takes (None: it takes **kwargs, so any)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def call_factory(factory: Callable, overrides: dict, name: str) -> ModelSpec:
    """Call the factory with the overrides; its result as a ModelSpec (a bare module is wrapped)."""
    accepted = factory_parameters(factory)
    if accepted is not None:
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise UserInputError(f"{name}: the factory takes no {', '.join(map(repr, unknown))}; its parameters: "
                                 f"{', '.join(accepted) or '(none)'}")
    try:
        result = factory(**overrides)
    except Exception as e:  # noqa: BLE001 -- the user's code: its error, one line
        raise UserInputError(f"{name}: the factory raised {_first_line(e)}") from None
    if isinstance(result, ModelSpec):
        return result
    if isinstance(result, nn.Module):
        return ModelSpec(model=result)
    raise UserInputError(f"{name}: the factory returned a {type(result).__name__}; expected an nn.Module "
                         f"(HF's convention) or an enact_bench.detectors.ModelSpec")
