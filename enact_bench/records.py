"""Records (schema 1, docs/CONTRACTS.md): the Record dataclass, the one writer and the one
reader of records.jsonl, the latest record per case, the key that pairs a baseline with its
ENACT variant, and environment capture. show, report and check all read records through here.

One JSON object per line, appended (flush + fsync) as soon as a case ends, so a crash loses at
most the case in flight. A process killed mid-write leaves a torn last line (no newline, not
JSON). Every reader skips a torn last line with a warning; a bad line anywhere else is an error
naming the line. The writer never glues a record onto a torn line: before appending it moves
the torn text to `records.jsonl.torn` and says so once on stderr.

This module imports torch only inside capture_env, so reports can read records without torch.
"""
from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, TypeVar

from enact_bench.errors import UserInputError

SCHEMA = 1
STATUSES = ("ok", "oom", "error", "skipped")
RECORDS_FILE = "records.jsonl"
TORN_SUFFIX = ".torn"
# case fields that do not define the setting a baseline and its ENACT variant share: the
# variant itself, what the built model reports about it, and its weights (a baseline and an
# ENACT model are trained separately, so their checkpoints always differ)
NOT_PAIRING = ("enact", "enact_config", "attention", "family", "checkpoint", "checkpoint_sha256",
               "trust_checkpoint")


class RecordsError(UserInputError):
    """records.jsonl cannot be read (missing, empty, a bad line that is not the torn last one)."""


@dataclass
class Record:
    run_id: str
    suite: str
    case_id: str
    status: str
    case: dict
    metrics: dict = field(default_factory=dict)
    null_reasons: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    error: str | None = None
    started_at: str = ""
    duration_s: float | None = None
    schema: int = SCHEMA

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        order = ["schema", "run_id", "suite", "case_id", "status", "error", "case", "metrics",
                 "null_reasons", "env", "started_at", "duration_s"]
        return {k: d[k] for k in order}

    def to_json(self) -> str:
        return json.dumps(_jsonable(self.to_dict()), allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        known = {k: d[k] for k in ("run_id", "suite", "case_id", "status", "case", "metrics",
                                  "null_reasons", "env", "error", "started_at", "duration_s",
                                  "schema") if k in d}
        return cls(**known)


def _jsonable(x: Any) -> Any:
    """Plain JSON: tuples -> lists, NaN/inf -> None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()  # numpy / torch scalars
    return x


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def records_file(path: str | Path) -> Path:
    """A run folder (reports/<run_id>/) or a records.jsonl file -> the file; one-line error if
    absent, or if `path` is some other file of a run folder (run.json, suite.toml, ...)."""
    p = Path(path)
    if p.is_file() and p.suffix != ".jsonl":
        raise RecordsError(f"{p} is a file, not records: expected a run folder written by `enact-bench run` "
                           f"(reports/<run_id>) or its {RECORDS_FILE}" + (f"; try {p.parent}" if (
                               p.parent / RECORDS_FILE).is_file() else ""))
    f = p / RECORDS_FILE if p.is_dir() else p
    if not f.is_file():
        raise RecordsError(f"no records found at {f} (expected a run folder written by `enact-bench run`, "
                           f"with {RECORDS_FILE} in it, or the path of a {RECORDS_FILE} file)")
    return f


REPORTS_DIR = "reports"  # where `run` puts run folders by default (its --out)


def latest_run_dir(parent: str | Path = REPORTS_DIR) -> Path:
    """The run folder under `parent` whose records.jsonl was written last: what `show`, `report`
    and `check` read when no run folder is given. One-line error when there is none."""
    p = Path(parent)
    runs = [f for f in p.glob(f"*/{RECORDS_FILE}") if f.is_file()] if p.is_dir() else []
    if not runs:
        raise RecordsError(f"no run folder given, and no run under {p}/ (looked for {p}/*/{RECORDS_FILE}); "
                           "give RUN_DIR, or run a suite first: `enact-bench run --suite smoke`")
    return max(runs, key=lambda f: (f.stat().st_mtime, f.parent.name)).parent


def _set_aside_torn_tail(path: Path) -> None:
    """If the file does not end with a newline, its last line was cut off mid-write: move that
    text to <file>.torn (appended) and truncate the file after its last newline. A last line that
    is a whole record without its newline only gets the newline."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return
        torn = path.with_name(path.name + TORN_SUFFIX)
        with open(torn, "ab") as t:
            t.write(tail + b"\n")
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    print(f"enact-bench: {path}: its last line was cut off mid-write ({len(tail)} bytes, not a record); "
          f"moved it to {torn.name} before appending", file=sys.stderr)


def append_record(path: str | Path, record: Record) -> None:
    """Append one line and make it durable (flush + fsync) before returning. A torn last line
    (a process killed mid-write) is set aside first, never glued to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.to_json() + "\n"
    if path.exists():
        _set_aside_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> list[Record]:
    """Every record of a run folder or records.jsonl file, in file order (all attempts).

    Blank lines are skipped; a torn last line is skipped with a warning; any other line that is
    not a schema-1 record object is a RecordsError naming the line."""
    path = records_file(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                warnings.warn(f"{path}:{i}: skipped an incomplete last record, unreadable (a run killed "
                              f"mid-write?): {e}", stacklevel=2)
                continue
            raise RecordsError(f"{path}:{i}: not valid JSON ({e}); each line must be one record object") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise RecordsError(f"{path}:{i}: record schema {got!r} is not supported; expected a JSON object "
                               f"with \"schema\": {SCHEMA} (docs/CONTRACTS.md)")
        try:
            out.append(Record.from_dict(d))
        except (TypeError, ValueError) as e:
            raise RecordsError(f"{path}:{i}: not a record ({e})") from None
    return out


def read_record_dicts(path: str | Path) -> list[dict]:
    """read_records as plain dicts (Record.to_dict), for code that works on JSON (report, check)."""
    return [r.to_dict() for r in read_records(path)]


R = TypeVar("R", Record, dict)


def _case_id(r: Record | dict) -> str:
    return r.case_id if isinstance(r, Record) else r.get("case_id")


def latest_per_case(records: Iterable[R]) -> list[R]:
    """The last attempt of each case_id (a resumed run appends new attempts after the old), at
    the place of the case's first attempt (suite order). Records or their dicts."""
    records = list(records)
    last = {_case_id(r): r for r in records}
    out, seen = [], set()
    for r in records:
        cid = _case_id(r)
        if cid not in seen:
            seen.add(cid)
            out.append(last[cid])
    return out


def latest_by_case(records: Iterable[R]) -> dict[str, R]:
    """latest_per_case as {case_id: record}."""
    return {_case_id(r): r for r in latest_per_case(records)}


def pair_key(case: dict) -> str:
    """What a baseline case and its ENACT variant share: the case minus NOT_PAIRING, as JSON
    (sorted keys). Equal keys pair; checkpoints never stop a pair."""
    return json.dumps({k: v for k, v in case.items() if k not in NOT_PAIRING}, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout the package runs from; (None, None) outside git."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, bool(status) if status is not None else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml_driver() -> str | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        return None


def capture_env(device: str = "cpu") -> dict:
    """What a figure needs to be reproduced: device, driver, library versions, numeric settings."""
    import torch
    import torchvision

    kind = torch.device(device).type
    commit, dirty = git_commit()
    env = {
        "device_name": _cpu_name(), "device_kind": kind, "driver": None,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": None, "cudnn": None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "git_commit": commit, "git_dirty": dirty,
        "host": socket.gethostname(), "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if kind == "cuda" and torch.cuda.is_available():
        dev = torch.device(device)
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        env["device_name"] = torch.cuda.get_device_name(index)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = _nvml_driver()
    return env


if __name__ == "__main__":  # pragma: no cover
    json.dump(capture_env(sys.argv[1] if len(sys.argv) > 1 else "cpu"), sys.stdout, indent=1)
