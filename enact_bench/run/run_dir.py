"""The run folder: reports/<run_id>/ with suite.toml (the suite text as run), run.json (how to
resume: suite path, overrides, case edits, case ids), records.jsonl, cases/ and logs/."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from enact_bench.errors import UserInputError
from enact_bench.records import utc_now
from enact_bench.suite.load import Suite, load_suite_text


def new_run_id(suite_name: str) -> str:
    return f"{suite_name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def prepare_run(suite: Suite, out_dir: str | Path, overrides: list | None = None,
                run_id: str | None = None, case_edits: dict | None = None) -> tuple[Path, str]:
    """Create OUT/<run_id>/ (a suffix -2, -3, ... when it exists) with suite.toml and run.json."""
    run_id = run_id or new_run_id(suite.name)
    run_dir = Path(out_dir) / run_id
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = Path(out_dir) / f"{run_id}-{n}"
    run_id = run_dir.name
    run_dir.mkdir(parents=True)
    (run_dir / "suite.toml").write_text(suite.text)
    meta = {"run_id": run_id, "suite": suite.name, "suite_path": str(suite.path) if suite.path else None,
            "overrides": overrides or [], "case_edits": case_edits or {}, "created_at": utc_now(),
            "case_ids": [c.case_id for c in suite.cases]}
    (run_dir / "run.json").write_text(json.dumps(meta, indent=1))
    return run_dir, run_id


def read_run_meta(run_dir: str | Path) -> tuple[str, dict]:
    """(suite.toml text, run.json) of an existing run folder, for --resume."""
    run_dir = Path(run_dir)
    meta_file, suite_file = run_dir / "run.json", run_dir / "suite.toml"
    if not meta_file.is_file() or not suite_file.is_file():
        raise UserInputError(f"{run_dir} is not a run folder (expected run.json and suite.toml in it)")
    return suite_file.read_text(), json.loads(meta_file.read_text())


def load_run_suite(run_dir: str | Path) -> tuple[Suite, dict]:
    """The suite of an existing run (its suite.toml copy, overrides and case edits re-applied)."""
    from enact_bench.suite.edits import CaseEdits

    run_dir = Path(run_dir)
    text, meta = read_run_meta(run_dir)
    base = Path(meta["suite_path"]).parent if meta.get("suite_path") else run_dir
    overrides = [(k, v) for k, v in meta.get("overrides", [])]
    suite = load_suite_text(text, path=run_dir / "suite.toml", overrides=overrides, base_dir=base)
    return edit_suite(suite, CaseEdits.from_json(meta.get("case_edits"))), meta


def edit_suite(suite: Suite, edits) -> Suite:
    """The suite with the command line's case edits (a CaseEdits) applied, their environment set
    in this process (inherited by the case processes), and every case's COCO data checked, so
    that a missing root or file is a one-line error before any case runs."""
    suite = edits.apply(suite)
    os.environ.update(edits.environment())
    check_suite_data(suite)
    return suite


def check_suite_data(suite: Suite) -> None:
    from enact_bench.data.coco import CocoDataError
    from enact_bench.data.coco_source import check_case_data

    try:
        for case in suite.cases:
            check_case_data(case)
    except (CocoDataError, ValueError) as e:
        raise UserInputError(str(e)) from None
