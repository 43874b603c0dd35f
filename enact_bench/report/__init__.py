"""Tables and plots from records.jsonl (never imports torch, so reports rebuild anywhere).

    from enact_bench.report import build_report
    paths = build_report(["reports/<run_id>"], "out/")   # {file name: path}
"""
from .build import build_report, default_out_dir
from .load import load_records, read_records
from .tables import paired_table

__all__ = ["build_report", "default_out_dir", "load_records", "read_records", "paired_table"]
