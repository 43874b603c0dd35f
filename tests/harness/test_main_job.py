"""The main job (`enact-bench run --suite smoke`) shows what ENACT buys on something measured, and
prints no time difference that is noise as a percentage: times carry the spread of their steps,
a difference inside it reads "~"; the first lines say which figures are estimates."""
from __future__ import annotations

import dataclasses

import pytest
from rich.console import Console

from enact_bench.commands.run import what_the_figures_are
from enact_bench.console import pairs_table
from enact_bench.records import Record
from enact_bench.run.case import run_case
from enact_bench.suite import Case, load_suite
from enact_bench.summary import within_noise


def _rec(enact: bool, p50: float, p10: float, p90: float, count: int = 5) -> Record:
    case = Case(detector="detr_tiny", enact=enact, image_size=(64, 96))
    return Record(run_id="r", suite="s", case_id=case.case_id, status="ok", case=case.to_dict(),
                  metrics={"cpu_tracked_peak_mib": 100.0 if not enact else 70.0, "step_ms_p50": p50,
                           "step_ms_p10": p10, "step_ms_p90": p90, "step_count": count})


def _row(records, case_id: str) -> dict[str, str]:
    """The pairs table's row of `case_id`, as {column header: cell text}."""
    c = Console(width=250, record=True, color_system=None)
    c.print(pairs_table(records))
    lines = c.export_text().splitlines()
    cells = lambda line: [x.strip() for x in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
    header = cells(next(line for line in lines if "Δ time" in line))
    return dict(zip(header, cells(next(line for line in lines if case_id in line))))


@pytest.mark.parametrize("enact_times, noise, shows", [
    ((260.0, 210.0, 330.0), True, "~"),        # +30 % on the medians, but the spreads overlap
    ((400.0, 380.0, 420.0), False, "+100.0%"),  # well outside the baseline's 190-230
    ((199.0, 199.0, 199.0), None, "-"),        # one timed step: no spread to judge by
])
def test_time_difference_is_a_percentage_only_outside_the_noise(enact_times, noise, shows):
    base = _rec(False, 200.0, 190.0, 230.0)
    enact = _rec(True, *enact_times, count=1 if noise is None else 5)
    assert within_noise(base, enact) is noise
    row = _row([base, enact], enact.case_id)
    assert row["Δ time"] == shows, row
    assert row["Δ mem"] == "-30.0%"  # memory is exact: its change is always a percentage
    assert row["ms base"] == "200.0 (190-230)"  # the spread beside the median
    assert row["ms ENACT"] == (f"{enact_times[0]:.1f} ({enact_times[1]:.0f}-{enact_times[2]:.0f})"
                               if noise is not None else "199.0")


def test_the_first_lines_say_which_figures_are_estimates():
    text = what_the_figures_are(load_suite("smoke"))
    assert "ESTIMATE for the full-size detr_r50 on a h100-80gb GPU" in text
    assert "4 case(s) after it are MEASURED on this machine's" in text
    assert text.count(".") >= 1 and "\n" not in text


@pytest.mark.slow
def test_the_smoke_training_pair_measures_an_enact_saving_of_a_fifth_or_more():
    """The smoke suite's own training cases (fewer steps, no FLOPs): ENACT's measured CPU peak of
    live tensors is at least 20% below the baseline's, because their encoder attention carries
    the step's peak."""
    train = [c for c in load_suite("smoke", [("device", ["cpu"])]).cases if c.mode == "train"]
    assert [c.enact for c in train] == [False, True]
    peaks = []
    for case in train:
        rec = run_case(dataclasses.replace(case, iters=1, flops=False, cpu_threads=1))
        assert rec.status == "ok", rec.error
        peaks.append(rec.metrics["cpu_tracked_peak_mib"])
        if case.enact:
            before, after = rec.metrics["enact_key_len_before"], rec.metrics["enact_key_len_after"]
            assert all(a < b for a, b in zip(after, before)), (before, after)
    base, enact = peaks
    assert enact <= 0.8 * base, (base, enact)
