"""Packaging beyond what pyproject.toml can say: suites/ stays at the top of the repository
and is installed inside the package as enact_bench/suite_files/ (wheel, `pip install .` and
`pip install -e .` alike), so `enact-bench list` finds the shipped suites and baselines from
any directory. Everything else about the project is in pyproject.toml."""
from setuptools import find_packages, setup

SUITES_PACKAGE = "enact_bench.suite_files"

setup(
    packages=find_packages(include=["enact", "enact.*", "enact_bench", "enact_bench.*"]) + [SUITES_PACKAGE],
    package_dir={SUITES_PACKAGE: "suites"},
    package_data={SUITES_PACKAGE: ["*.toml", "baselines/*.json"]},
)
