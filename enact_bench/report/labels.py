"""Names, units and number formats shared by the tables and the plots (plain Python)."""
from __future__ import annotations

from enact_bench import metrics as metrics_schema

DEFORMABLE_FAMILIES = ("deformable_detr", "dino")
DEFORMABLE_ENACT = "ENACT token clustering (extension beyond the paper)"
# EnactConfig()'s defaults, kept here because report/ never imports torch (or enact);
# tests/report/test_report_labels.py holds this equal to dataclasses.asdict(EnactConfig()).
# A variant is labelled by what differs from them.
ENACT_DEFAULTS = {"sigma": 3.0, "cluster_scope": "batch", "scale": "reference",
                  "mask_padding": False, "backend": "sdpa", "cluster_size": None}

# metric -> (label, unit, how the change is given: "pct" relative or "pts" AP points): the
# record metrics' from enact_bench/metrics.py, then the columns the report derives itself
METRICS = {
    **{m.name: (m.label, m.unit, m.change) for m in metrics_schema.SCHEMA if m.label},
    "key_len": ("encoder key length, mean over layers", "tokens", "pct"),
    "coco_map": ("AP", "%", "pts"),
    "coco_map_50": ("AP50", "%", "pts"),
    "coco_map_75": ("AP75", "%", "pts"),
}
# memory metrics in the order a plot prefers them: what was measured on that device
MEMORY_PREFERENCE = tuple(m.name for m in sorted((m for m in metrics_schema.SCHEMA if m.plot_rank is not None),
                                                 key=lambda m: m.plot_rank))
# table order; RSS stays in the cases CSV only: it is not a tensor peak
MEMORY_TABLE = tuple(m.name for m in metrics_schema.SCHEMA if m.memory_table)
DEVICE_ORDER = {"cuda": 0, "cpu": 1}
DEVICE_MEMORY = {"cuda": "mem_peak_alloc_mib", "cpu": "cpu_tracked_peak_mib"}   # the reading that matters
MODE_ORDER = {"train": 0, "infer": 1}
COCO_ORDER = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
COCO_NAMES = {"map": "AP", "map_50": "AP50", "map_75": "AP75", "map_small": "APs",
              "map_medium": "APm", "map_large": "APl", "mar_1": "AR1", "mar_10": "AR10",
              "mar_100": "AR100", "mar_small": "ARs", "mar_medium": "ARm", "mar_large": "ARl"}
STATUS_TEXT = {"oom": "OOM", "error": "error", "skipped": "skipped"}


def device_type(device) -> str:
    """"cuda:1" -> "cuda"."""
    return str(device or "").split(":")[0]


def device_rank(device) -> tuple:
    return (DEVICE_ORDER.get(device_type(device), 9), str(device))


def detector_family(detector: str) -> str:
    """Family from a registry name when the record does not carry one (`detr_r50` -> `detr`;
    a source model: `hf:detr` -> `hf:detr`, a factory -> `factory`)."""
    if detector.startswith("hf:"):
        return detector
    if detector.startswith("py:") or ".py:" in detector:
        return "factory"
    for fam in ("conditional_detr", "anchor_detr", "deformable_detr", "dino", "detr"):
        if detector.startswith(fam):
            return fam
    return detector.split("_")[0] if detector else "unknown"


def variant_label(enact: bool, config: dict | None, family: str) -> str:
    if not enact:
        return "baseline"
    name = DEFORMABLE_ENACT if family in DEFORMABLE_FAMILIES else "ENACT"
    diff = [f"{k}={v}" for k, v in sorted((config or {}).items())
            if k in ENACT_DEFAULTS and v != ENACT_DEFAULTS[k]]
    diff += [f"{k}={v}" for k, v in sorted((config or {}).items()) if k not in ENACT_DEFAULTS]
    return f"{name} ({', '.join(diff)})" if diff else name


def header(metric: str, which: str = "") -> str:
    """Column header with its unit: header('step_ms_p50', 'ENACT') -> 'step time median ENACT (ms)'."""
    label, unit, _ = METRICS[metric]
    return f"{label}{' ' + which if which else ''} ({unit})"


def delta_header(metric: str) -> str:
    label, _, kind = METRICS[metric]
    return f"Δ {label} ({'%' if kind == 'pct' else 'AP points'})"


def is_missing(v) -> bool:
    """None, NaN or pd.NA (lists and dicts are values)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple, dict, str)):
        return False
    try:
        return bool(v != v) or type(v).__name__ == "NAType"
    except TypeError:   # pd.NA != pd.NA raises in a bool context
        return True


def text(v, default: str = "") -> str:
    return default if is_missing(v) or v == "" else str(v)


def fmt_value(v, unit: str = "") -> str:
    """A number for a table cell: thousands separators, precision by magnitude."""
    if is_missing(v):
        return "n/m"
    v = float(v)
    if unit == "%":
        return f"{v:.1f}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_delta(v, kind: str) -> str:
    if is_missing(v):
        return "n/m"
    sign = "+" if v > 0 else ("−" if v < 0 else "±")
    return f"{sign}{abs(v):.1f} %" if kind == "pct" else f"{sign}{abs(v):.1f} pts"


def device_title(device_name: str | None, device: str | None, device_kind: str | None,
                 host: str | None) -> str:
    """Name of the device a case ran on. A cpu case on a GPU host is not the GPU."""
    if device_type(device) == "cpu" and device_kind != "cpu":
        return f"CPU of host {host or '?'}"
    return device_name or device or "unknown device"
