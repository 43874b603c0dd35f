"""The CI memory-regression gate: compare a run's records with a baseline JSON file.

Verdicts per (case, metric):
- exact metrics (tracked bytes, saved-for-backward bytes, FLOPs, parameter counts, the attention
  kernel): any growth is a regression; a decrease is an improvement that suggests refreshing the
  baseline (`--update`); both are deterministic on a CPU, so their default tolerance is 0.
- noisy metrics (CUDA reserved memory, NVML readings, step time): a relative tolerance, widened
  by the spread of repeats stored in the baseline, so that noise alone does not fail.
Exit codes (`check`): 0 nothing regressed, 1 something regressed (or a case failed or is
missing), 2 the run and the baseline are not comparable (suite, device kind, torch major.minor,
GPU model), each with a one-line reason. docs/regress.md explains the file format.
`--baseline` is a path or a shipped baseline's name (`find_baseline`: the `baselines/` folder
beside the shipped suites).

This module does not import torch: records are plain JSON.
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from enact_bench import metrics as metrics_schema
from enact_bench.errors import UserInputError
from enact_bench.records import latest_per_case, read_record_dicts, records_file
from enact_bench.suite.load import suite_dirs

BASELINE_FORMAT = 1

# kind "exact": tolerance `rel` (default 0) on growth; "noisy": tolerance max(rel * base,
# abs, spread_k * spread); "set": the set of names. `better` = "lower" (memory, time) or
# "higher". The rules per metric are in enact_bench/metrics.py (gate_cpu, gate_gpu).
CPU_TOLERANCES: dict[str, dict] = metrics_schema.tolerances("cpu")
GPU_TOLERANCES: dict[str, dict] = metrics_schema.tolerances("cuda")
SPREAD_FROM = metrics_schema.spread_from()  # a record's own spread for a metric, if it has one


def default_tolerances(device_kind: str) -> dict[str, dict]:
    return {k: dict(v) for k, v in (GPU_TOLERANCES if device_kind == "cuda" else CPU_TOLERANCES).items()}


def torch_series(version: str | None) -> str | None:
    """'2.14.1+cu128' -> '2.14': runs compare within a major.minor series (docs/regress.md)."""
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


class NotComparable(Exception):
    """The run and the baseline measure different things; the message is the one-line reason."""


# ---------------------------------------------------------------------------------------
# reading runs and baselines
# ---------------------------------------------------------------------------------------
def load_run(run_dir: str | Path) -> list[dict]:
    """The latest record of each case in RUN_DIR/records.jsonl, as plain dicts."""
    path = records_file(run_dir)
    latest = latest_per_case(read_record_dicts(path))
    if not latest:
        raise UserInputError(f"{path} holds no records")
    return latest


def list_baselines() -> dict[str, Path]:
    """Shipped baselines by name (file stem): <suite folder>/baselines/*.json."""
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for p in sorted((d / "baselines").glob("*.json")):
            found.setdefault(p.stem, p)
    return found


def find_baseline(name_or_path: str | os.PathLike) -> Path:
    """`--baseline ci-cpu` (a shipped baseline's name) or a path. A path is returned as given
    (it need not exist: `check --update` writes it); a bare name must be shipped."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.suffix == ".json" or os.sep in text or "/" in text or p.exists():
        if p.is_dir():
            raise UserInputError(f"--baseline {text}: is a folder; expected a baseline .json file "
                                 f"(e.g. suites/baselines/ci-cpu.json) or a shipped baseline name")
        return p
    shipped = list_baselines()
    if text in shipped:
        return shipped[text]
    raise UserInputError(f"unknown baseline {text!r}: expected a path to a .json file or a shipped "
                         f"baseline name ({', '.join(sorted(shipped)) or 'none shipped'})")


def load_baseline(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"baseline file not found: {p} (write one with --update)")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise UserInputError(f"{p}: not valid JSON: {e}") from None
    if doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("cases"), dict):
        raise UserInputError(f"{p}: not an enact-bench baseline (expected format {BASELINE_FORMAT} with a `cases` table)")
    return doc


def _run_identity(records: list[dict]) -> dict:
    """suite, device kind/name and versions of a run (all its records must agree)."""
    ok = [r for r in records if r.get("env")] or records
    first = ok[0]
    env = first.get("env") or {}
    ident = {"suite": first.get("suite"), "device_kind": env.get("device_kind"),
             "device_name": env.get("device_name"), "torch": env.get("torch"),
             "torchvision": env.get("torchvision"), "cuda": env.get("cuda")}
    for r in ok[1:]:
        e = r.get("env") or {}
        for key in ("device_kind", "torch"):
            if e.get(key) is not None and e.get(key) != ident[key]:
                raise NotComparable(f"the run mixes {key} values ({ident[key]} and {e.get(key)}): one run per machine")
    return ident


def check_comparable(run: dict, base: dict) -> None:
    """Raise NotComparable with a one-line reason when the two runs measure different things."""
    if run["suite"] != base.get("suite"):
        raise NotComparable(f"suite differs: run is {run['suite']!r}, baseline is {base.get('suite')!r}")
    if run["device_kind"] != base.get("device_kind"):
        raise NotComparable(f"device kind differs: run on {run['device_kind']}, baseline on {base.get('device_kind')}")
    if torch_series(run["torch"]) != torch_series(base.get("torch")):
        raise NotComparable(f"torch differs: run {run['torch']}, baseline {base.get('torch')} "
                            "(compared within a major.minor series; refresh the baseline with --update)")
    if run["device_kind"] == "cuda" and run["device_name"] != base.get("device_name"):
        raise NotComparable(f"GPU differs: run on {run['device_name']}, baseline on {base.get('device_name')}")


# ---------------------------------------------------------------------------------------
# comparing
# ---------------------------------------------------------------------------------------
@dataclass
class Row:
    case_id: str
    metric: str
    baseline: Any
    current: Any
    verdict: str  # same | within noise | improved | regressed | changed | missing | failed | new
    note: str = ""

    @property
    def fails(self) -> bool:
        return self.verdict in ("regressed", "changed", "missing", "failed")

    @property
    def change(self) -> str:
        b, c = self.baseline, self.current
        if isinstance(b, (int, float)) and isinstance(c, (int, float)) and not isinstance(b, bool):
            diff = c - b
            pct = f" ({diff / b:+.2%})" if b else ""
            return f"{diff:+,.6g}{pct}" if isinstance(diff, float) else f"{diff:+,}{pct}"
        if isinstance(b, list) and isinstance(c, list):
            return "" if sorted(map(str, b)) == sorted(map(str, c)) else "changed"
        return "" if b == c else "changed"


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    run: dict = field(default_factory=dict)
    baseline: dict = field(default_factory=dict)

    @property
    def regressed(self) -> list[Row]:
        return [r for r in self.rows if r.fails]

    @property
    def improved(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "improved"]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0


def _compare_value(metric: str, tol: dict, base: Any, cur: Any, spread: float) -> tuple[str, str]:
    kind = tol.get("kind", "exact")
    if kind == "set":
        b, c = set(base or []), set(cur or [])
        if b == c:
            return "same", ""
        if "math" in c - b:
            return "regressed", f"the explicit-softmax (math) attention path appeared: {sorted(c)}"
        if "math" in b - c:
            return "improved", f"the math attention path is gone: {sorted(c)}"
        return "changed", f"attention kernels {sorted(b)} -> {sorted(c)}"
    higher_better = tol.get("better") == "higher"
    delta = (base - cur) if higher_better else (cur - base)  # > 0: worse
    if kind == "exact":
        allowed = abs(base) * tol.get("rel", 0.0)
        if delta == 0:
            return "same", ""
        if delta > allowed:
            return "regressed", "exact metric grew"
        if delta < 0:
            return "improved", "exact metric shrank: refresh the baseline (--update) to lock it in"
        return "same", f"grew within its tolerance ({tol.get('rel', 0):.2%})"
    allowed = max(abs(base) * tol.get("rel", 0.0), tol.get("abs", 0.0), tol.get("spread_k", 0.0) * spread)
    if delta > allowed:
        return "regressed", f"worse by more than the tolerance {allowed:.4g}"
    if delta < -allowed:
        return "improved", f"better by more than the tolerance {allowed:.4g}: consider --update"
    return ("same" if delta == 0 else "within noise"), f"tolerance {allowed:.4g}"


def compare(records: list[dict], baseline: dict) -> Comparison:
    """Compare a run (records as dicts) with a baseline document; raises NotComparable."""
    run = _run_identity(records)
    check_comparable(run, baseline)
    tolerances = baseline.get("tolerances") or default_tolerances(baseline.get("device_kind"))
    by_id = {r["case_id"]: r for r in records}
    out = Comparison(run=run, baseline=baseline)
    for case_id, bcase in baseline["cases"].items():
        rec = by_id.get(case_id)
        if rec is None:
            out.rows.append(Row(case_id, "(case)", "ok", None, "missing", "case not in this run"))
            continue
        if rec.get("status") != "ok":
            why = (rec.get("error") or "").splitlines()[0] if rec.get("error") else ""
            out.rows.append(Row(case_id, "(case)", "ok", rec.get("status"), "failed", why))
            continue
        metrics = rec.get("metrics") or {}
        for metric, tol in tolerances.items():
            if metric not in bcase["metrics"] or bcase["metrics"][metric] is None:
                continue
            base, cur = bcase["metrics"][metric], metrics.get(metric)
            if cur is None:
                reason = (rec.get("null_reasons") or {}).get(metric, "not in the record")
                verdict = "missing" if tol.get("kind", "exact") != "noisy" else "within noise"
                out.rows.append(Row(case_id, metric, base, None, verdict, f"not measured: {reason}"))
                continue
            cur_spread = metrics.get(SPREAD_FROM.get(metric, ""), 0.0) or 0.0
            spread = max(float((bcase.get("spread") or {}).get(metric, 0.0) or 0.0), float(cur_spread))
            verdict, note = _compare_value(metric, tol, base, cur, spread)
            out.rows.append(Row(case_id, metric, base, cur, verdict, note))
    for case_id in by_id.keys() - baseline["cases"].keys():
        out.rows.append(Row(case_id, "(case)", None, by_id[case_id].get("status"), "new",
                            "not in the baseline: --update adds it"))
    return out


# ---------------------------------------------------------------------------------------
# writing a baseline
# ---------------------------------------------------------------------------------------
def make_baseline(runs: list[list[dict]], *, tolerances: dict | None = None) -> dict:
    """A baseline document from one or more runs of the same suite (repeats).

    Exact metrics must agree across repeats (else the largest is kept and its spread noted);
    noisy metrics keep the median, and their spread (max - min across repeats, or the record's
    own spread such as step_ms_iqr) widens the tolerance in `compare`.
    """
    if not runs:
        raise UserInputError("no runs to make a baseline from")
    idents = [_run_identity(r) for r in runs]
    for other in idents[1:]:
        check_comparable(other, idents[0] | {"suite": idents[0]["suite"]})
    ident = idents[0]
    tol = tolerances or default_tolerances(ident["device_kind"])
    cases: dict[str, dict] = {}
    ids = [r["case_id"] for r in runs[0]]
    for case_id in ids:
        recs = [rec for run in runs for rec in run if rec["case_id"] == case_id and rec.get("status") == "ok"]
        if len(recs) < len(runs):
            bad = next((rec for run in runs for rec in run if rec["case_id"] == case_id and rec.get("status") != "ok"), None)
            status = bad.get("status") if bad else "missing"
            raise UserInputError(f"case {case_id} is {status} in a run: a baseline needs every case ok")
        metrics, spread = {}, {}
        for metric, t in tol.items():
            values = [rec["metrics"].get(metric) for rec in recs]
            if any(v is None for v in values):
                continue
            if t.get("kind") == "set":
                metrics[metric] = sorted(set().union(*map(set, values)))
                continue
            if t.get("kind", "exact") == "exact":
                metrics[metric] = max(values) if t.get("better") != "higher" else min(values)
                if len(set(values)) > 1:
                    spread[metric] = max(values) - min(values)
            else:
                metrics[metric] = statistics.median(values)
                own = [rec["metrics"].get(SPREAD_FROM.get(metric, "")) or 0.0 for rec in recs]
                spread[metric] = max(max(values) - min(values), max(own))
        cases[case_id] = {"case": recs[0].get("case"), "metrics": metrics}
        if spread:
            cases[case_id]["spread"] = spread
    first_env = next((rec.get("env") for run in runs for rec in run if rec.get("env")), {}) or {}
    return {
        "format": BASELINE_FORMAT,
        "suite": ident["suite"], "device_kind": ident["device_kind"], "device_name": ident["device_name"],
        "torch": ident["torch"], "torchvision": ident["torchvision"], "cuda": ident["cuda"],
        "compare_torch_series": torch_series(ident["torch"]),
        "repeats": len(runs),
        "git_commit": first_env.get("git_commit"),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tolerances": tol,
        "cases": cases,
    }


def installed_dirs() -> list[Path]:
    """Folders that belong to the Python installation, not to the user: this package's own
    folder (a wheel, or `pip install --target`) and the site-packages folders."""
    import site
    import sysconfig

    import enact_bench

    dirs = [Path(enact_bench.__file__).resolve().parent]
    paths = sysconfig.get_paths()
    dirs += [Path(paths[k]) for k in ("purelib", "platlib") if k in paths]
    try:
        dirs += [Path(p) for p in site.getsitepackages()]
    except AttributeError:  # some virtualenvs' site module
        pass
    return [d.resolve() for d in dict.fromkeys(dirs)]


def check_update_target(path: str | Path, given: str) -> None:
    """`check --update` writes the baseline: never into the installed package (pip's record of
    the install would no longer match, and later checks would compare a run with itself)."""
    target = Path(path).expanduser().resolve()
    for d in installed_dirs():
        if target.is_relative_to(d):
            raise UserInputError(f"--baseline {given} --update would write {target}, inside the installed "
                                 f"package ({d}); pass a path in your project instead, e.g. "
                                 f"--baseline baselines/{target.name} --update (then commit it)")


def write_baseline(path: str | Path, doc: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    tmp.replace(p)


# ---------------------------------------------------------------------------------------
# the command's body
# ---------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    exit_code: int
    reason: str  # one line
    comparison: Comparison | None = None
    baseline_written: Path | None = None


def run_check(run_dirs: list[str | Path], baseline_path: str | Path, *, update: bool = False) -> CheckResult:
    """Body of `enact-bench check`: compare (exit 0/1/2) or, with update, write the baseline.

    Several run folders are repeats of the same suite: with --update their spread widens the
    noisy metrics' tolerances; without it, the last one is checked.
    """
    runs = [load_run(d) for d in run_dirs]
    if update:
        old = Path(baseline_path)
        tolerances = None
        if old.is_file():
            try:
                prev = load_baseline(old)
                if prev.get("device_kind") == _run_identity(runs[0])["device_kind"]:
                    tolerances = prev.get("tolerances")  # keep hand-tuned tolerances
            except UserInputError:
                pass
        try:
            doc = make_baseline(runs, tolerances=tolerances)
        except NotComparable as e:
            return CheckResult(2, f"not comparable: {e}")
        write_baseline(baseline_path, doc)
        n = len(doc["cases"])
        return CheckResult(0, f"baseline written: {baseline_path} ({n} cases, {len(runs)} run(s), torch {doc['torch']}, "
                              f"{doc['device_kind']})", baseline_written=Path(baseline_path))
    baseline = load_baseline(baseline_path)
    try:
        comp = compare(runs[-1], baseline)
    except NotComparable as e:
        return CheckResult(2, f"not comparable: {e}")
    bad = comp.regressed
    if bad:
        names = sorted({f"{r.case_id}:{r.metric}" for r in bad})
        return CheckResult(1, f"regression: {len(bad)} check(s) failed: " + ", ".join(names), comp)
    better = comp.improved
    if better:
        return CheckResult(0, f"ok, {len(better)} metric(s) improved: refresh the baseline with --update to lock them in", comp)
    return CheckResult(0, f"ok: {len(comp.rows)} checks match the baseline", comp)
