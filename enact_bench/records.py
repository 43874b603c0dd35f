"""Record dataclass (schema 1, docs/CONTRACTS.md), JSONL append/read, environment capture.

One JSON object per case, appended (flush + fsync) as soon as the case ends, so a crash loses
at most the case in flight. Reading skips a truncated last line (a run killed mid-write) with a
warning. This module imports torch only inside capture_env, so reports can read records
without torch.
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
from typing import Any, Iterable

SCHEMA = 1
STATUSES = ("ok", "oom", "error", "skipped")


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


def append_record(path: str | Path, record: Record) -> None:
    """Append one line and make it durable (flush + fsync) before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.to_json() + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(path: str | Path) -> list[Record]:
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Record.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            warnings.warn(f"{path}:{i}: skipped an unreadable record ({e})")
    return out


def latest_by_case(records: Iterable[Record]) -> dict[str, Record]:
    """The last record of each case_id (a resumed run appends a new attempt after the old)."""
    out: dict[str, Record] = {}
    for r in records:
        out.pop(r.case_id, None)
        out[r.case_id] = r
    return out


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
