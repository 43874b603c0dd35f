"""Suites: a TOML file -> a Suite of frozen, checked Cases (defaults, matrix expansion, checks).

    case.py       Case (one measured configuration) and its stable case_id
    load.py       finding suites by name, reading the TOML, expanding the matrix (Suite, load_suite)
    checks.py     one validator per case key (VALIDATORS), the checks across keys, the choice tables
    plan_spec.py  the [plan] table as a checked PlanSpec
    edits.py      per-run edits from the command line (--checkpoint, --coco-root, --max-images)

Unknown keys, bad values and unknown detectors raise SuiteError naming the key and the file.
Every key, its default and its valid values are in docs/harness.md. The names below are the
package's public ones; code inside enact_bench imports them from their modules.
"""
from __future__ import annotations

from enact_bench.choices import DTYPES
from enact_bench.suite.case import Case
from enact_bench.suite.checks import check_checkpoint_file, parse_image_size
from enact_bench.suite.load import (Suite, find_suite, list_suites, load_suite, load_suite_text, parse_set_option,
                                    resolve_device)
from enact_bench.suite.plan_spec import PlanSpec

__all__ = ["DTYPES", "Case", "PlanSpec", "Suite", "check_checkpoint_file", "find_suite", "list_suites", "load_suite",
           "load_suite_text", "parse_image_size", "parse_set_option", "resolve_device"]
