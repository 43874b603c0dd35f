"""Finding suites by name, reading their TOML and expanding its matrix into cases.

A suite file has `name`, `description`, a `[defaults]` table and a `[matrix]` table (or several
`[[matrix]]` tables, each expanded on its own and concatenated), and may have a `[plan]` table
(suite/plan_spec.py). In a matrix, a list is an axis and a scalar is fixed for that group; the
cases are the product of the axes, in file order. Every key's check is in suite/checks.py.
"""
from __future__ import annotations

import itertools
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enact_bench.errors import SuiteError
from enact_bench.suite.case import CASE_KEYS, Case
from enact_bench.suite.checks import check_case_keys, check_checkpoint_file, check_value, is_int
from enact_bench.suite.plan_spec import PlanSpec

TOP_KEYS = ("name", "description", "defaults", "matrix", "plan")
SUITES_PACKAGE_DIR = "suite_files"  # suites/ as installed inside the package (setup.py)

Overrides = list[tuple[str, list]]  # (key, values): a key's value everywhere; several values: an axis


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path | None
    text: str  # the TOML as read (copied into reports/<run_id>/suite.toml)
    cases: tuple[Case, ...]
    plan: PlanSpec | None = None  # [plan]: full-size estimates `run` prints first (enact_bench.predict.plan)


# ---------------------------------------------------------------------------------------
# where shipped suites live
# ---------------------------------------------------------------------------------------
def suite_dirs() -> list[Path]:
    """Folders searched for `--suite NAME`: $ENACT_BENCH_SUITES (os.pathsep-separated), the
    package's own suite_files/ (a wheel or `pip install .`) and the repository's suites/ (a
    checkout or an editable `pip install -e .`)."""
    import enact_bench

    pkg = Path(enact_bench.__file__).resolve().parent
    dirs = [Path(p) for p in os.environ.get("ENACT_BENCH_SUITES", "").split(os.pathsep) if p]
    dirs += [pkg / SUITES_PACKAGE_DIR, pkg.parent / "suites"]
    return [d for d in dirs if d.is_dir()]


def list_suites() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def find_suite(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" or os.sep in name_or_path or "/" in name_or_path:
        if not p.is_file():
            raise SuiteError(f"suite file not found: {p}")
        return p
    shipped = list_suites()
    if name_or_path in shipped:
        return shipped[name_or_path]
    if p.is_file():
        return p
    raise SuiteError(f"unknown suite {name_or_path!r}; shipped suites: {', '.join(sorted(shipped)) or 'none'}"
                     " (or give a path to a .toml file)")


# ---------------------------------------------------------------------------------------
# loading and expansion
# ---------------------------------------------------------------------------------------
def parse_set_option(text: str) -> tuple[str, Any]:
    """`key=value` (value read as a TOML value, else as a plain string)."""
    if "=" not in text:
        raise SuiteError(f"--set {text!r}: expected key=value, e.g. --set iters=3")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_suite(name_or_path: str, overrides: Overrides | None = None) -> Suite:
    path = find_suite(name_or_path)
    text = path.read_text()
    return load_suite_text(text, path=path, overrides=overrides)


def load_suite_text(text: str, path: Path | None = None,
                    overrides: Overrides | None = None, base_dir: Path | None = None) -> Suite:
    """Parse suite text; relative checkpoint paths resolve against base_dir (default: the
    file's folder)."""
    where = str(path) if path else "<suite>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{where}: not valid TOML: {e}") from None
    name = doc.get("name", path.stem if path else "suite")
    description = doc.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SuiteError(f"{where}: name and description must be strings")
    cases = expand(doc, where, overrides, base_dir=base_dir or (path.parent if path else None))
    if not cases:
        raise SuiteError(f"{where}: the suite expands to no cases")
    plan = PlanSpec.from_table(doc["plan"], where) if "plan" in doc else None
    return Suite(name=name, description=description, path=path, text=text, cases=tuple(cases), plan=plan)


def expand(doc: dict, where: str, overrides: Overrides | None = None,
           base_dir: Path | None = None) -> list[Case]:
    """Expand a parsed suite document into cases; `overrides` (key, values) replace a key's
    value everywhere (several values make it an axis); dotted keys (`overrides.hidden_dim`)
    set one entry of a table. Cases that overrides made identical appear once."""
    for key in doc:
        if key not in TOP_KEYS:
            raise SuiteError(f"{where}: unknown top-level key {key!r}; valid keys: {', '.join(TOP_KEYS)}")
    raws = _apply_overrides(_matrix_rows(doc, where), overrides or [])
    cases, seen = [], set()
    for raw in raws:
        case = _build_case(raw, where, base_dir)
        if case.case_id in seen:
            continue  # an override collapsed two cases into one
        seen.add(case.case_id)
        cases.append(case)
    return cases


def _matrix_rows(doc: dict, where: str) -> list[dict]:
    """[defaults] and each matrix group -> one raw (unchecked) key/value dict per case, in file order."""
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SuiteError(f"{where}: [defaults] must be a table")
    matrix = doc.get("matrix", [{}])
    groups = [matrix] if isinstance(matrix, dict) else matrix
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise SuiteError(f"{where}: matrix must be a table ([matrix]) or tables ([[matrix]])")
    for key in defaults:
        if key not in CASE_KEYS:
            raise SuiteError(f"{where}: [defaults]: unknown key {key!r}; valid keys: {', '.join(CASE_KEYS)}")
    rows: list[dict] = []
    for group in groups:
        axes, fixed = [], {}
        for key, value in group.items():
            if key not in CASE_KEYS:
                raise SuiteError(f"{where}: [matrix]: unknown key {key!r}; valid keys: {', '.join(CASE_KEYS)}")
            if _is_single_value(key, value):
                fixed[key] = value
            else:
                if not value:
                    raise SuiteError(f"{where}: [matrix]: {key} = []: an axis needs at least one value")
                axes.append((key, value))
        for combo in itertools.product(*(vals for _, vals in axes)):
            rows.append({**defaults, **fixed, **dict(zip((k for k, _ in axes), combo))})
    return rows


def _is_single_value(key: str, value: Any) -> bool:
    """A matrix value that is one value, not an axis: a scalar, or a list that is itself one
    value of its key ([H, W] for image_size, a list of names for evaluate)."""
    if not isinstance(value, list):
        return True
    if key == "image_size":
        return len(value) == 2 and all(is_int(v) for v in value)
    if key == "evaluate":
        return all(isinstance(v, str) for v in value)
    return False


def _apply_overrides(rows: list[dict], overrides: Overrides) -> list[dict]:
    """Each (key, values) replaces the key in every row, one row per value; `head.sub` sets one
    entry of the table `head`."""
    for key, values in overrides:
        head = key.split(".", 1)[0]
        if head not in CASE_KEYS:
            raise SuiteError(f"override {key!r}: unknown key; valid keys: {', '.join(CASE_KEYS)}")
        new = []
        for raw in rows:
            for v in values:
                r = dict(raw)
                if "." in key:
                    sub = key.split(".", 1)[1]
                    table = r.get(head) or {}
                    if not isinstance(table, dict):
                        raise SuiteError(f"override {key!r}: {head} is not a table")
                    r[head] = {**table, sub: v}
                else:
                    r[key] = v
                new.append(r)
        rows = new
    return rows


def _build_case(raw: dict, where: str, base_dir: Path | None) -> Case:
    """One row of raw values -> a checked Case (each key, then the keys together)."""
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        v = check_value(key, value, where)
        if key == "image_size":
            kw["image_size"], kw["image_size_dist"] = v
        else:
            kw[key] = v
    if "detector" not in kw:
        raise SuiteError(f"{where}: no detector; set `detector` in [defaults] or [matrix]")
    kw["device"] = resolve_device(kw.get("device", "auto"))
    if not kw.get("enact", False):
        kw["enact_config"] = None  # a baseline has no ENACT config (keeps pairs' ids aligned)
    if kw.get("checkpoint") and base_dir is not None and not Path(kw["checkpoint"]).is_absolute():
        kw["checkpoint"] = str((base_dir / kw["checkpoint"]).resolve())
    if kw.get("checkpoint"):
        check_checkpoint_file(kw["checkpoint"], f"{where}: checkpoint = {raw['checkpoint']!r}")
    check_case_keys(kw, where)
    try:
        return Case(**kw)
    except ValueError as e:
        raise SuiteError(f"{where}: {e}") from None
