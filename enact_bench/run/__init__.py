"""Where and how a Case runs (nothing here is imported by measure/, data/ or detectors/):

- steps.py: the case's model (`build_model`) and its steps (`case_steps`) over the one train /
  infer step of enact_bench.train.step;
- case.py: the trackers around a case's steps -> a Record (`run_case`, `measure_case_fake`);
- launch.py: where a case runs (`launch_subprocess` in its own process group, `launch_inline`)
  and the child's entry point `python -m enact_bench.run.launch`;
- run_dir.py: the run folder (`prepare_run`, `load_run_suite` for --resume);
- preflight.py: the checks before any work (`preflight`: a device the machine lacks, a
  checkpoint that does not fit its detector);
- suite_run.py: a suite's cases one after another (`run_suite`, `RunResult`), and the finished
  records a killed run left behind (`recover_finished`).

The names below are importable from `enact_bench.run` (imported on first use, so that
`python -m enact_bench.run.launch` does not find its own module already imported).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_model": "steps", "case_steps": "steps", "CaseSteps": "steps",
    "run_case": "case", "measure_case": "case", "measure_case_fake": "case", "failed_record": "case",
    "launch_subprocess": "launch", "launch_inline": "launch", "Launcher": "launch", "CasePaths": "launch",
    "prepare_run": "run_dir", "load_run_suite": "run_dir", "new_run_id": "run_dir",
    "run_suite": "suite_run", "RunResult": "suite_run", "recover_finished": "suite_run",
    "preflight": "preflight",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
