"""Baseline lookup (regress.py): a shipped baseline by name or any path, and the ci suite's ids are its keys."""
from __future__ import annotations

import json

import pytest

from enact_bench.errors import UserInputError
from enact_bench.regress import find_baseline, list_baselines
from enact_bench.suite.load import load_suite


def test_shipped_baseline_is_found_by_name_or_path(tmp_path):
    assert find_baseline("ci-cpu") == list_baselines()["ci-cpu"]
    assert find_baseline("ci-cpu").name == "ci-cpu.json" and find_baseline("ci-cpu").is_file()
    assert find_baseline(str(tmp_path / "new.json")) == tmp_path / "new.json"  # --update may create it
    with pytest.raises(UserInputError, match="unknown baseline 'nope'.*ci-cpu"):
        find_baseline("nope")


def test_ci_case_ids_are_the_baseline_keys():
    baseline = json.loads(find_baseline("ci-cpu").read_text())
    assert [c.case_id for c in load_suite("ci").cases] == list(baseline["cases"])


def test_a_folder_is_not_a_baseline(tmp_path):
    with pytest.raises(UserInputError, match="is a folder; expected a baseline .json file"):
        find_baseline(str(tmp_path))
