"""A suite's [plan] table as a typed, checked PlanSpec: the full-size estimates `enact-bench run`
prints before the measured cases (enact_bench.predict.plan, one PlanRequest per detector).

Checked when the suite loads: an unknown key, detector, GPU or variant, or an image size the plan
cannot take, is a SuiteError naming the key and the file, before any case runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from enact_bench.errors import SuiteError
from enact_bench.choices import ALL_VARIANTS, VARIANTS
from enact_bench.sizes import MIN_PLAN_SIDE_PX
from enact_bench.suite.checks import known_detectors, check_value, is_int

PLAN_KEYS = ("detectors", "gpu", "image_size", "variants", "enact_cluster_size")


@dataclass(frozen=True)
class PlanSpec:
    """[plan]: detectors (list), gpu, image_size ("HxW" or [H, W]), variants (list), enact_cluster_size.
    The defaults are `enact-bench plan`'s (predict/plan.py VARIANTS, DEFAULT_CLUSTER_SIZE)."""

    detectors: tuple[str, ...]
    gpu: str = "h100-80gb"  # a name or alias of predict/gpus.py; kept as the table's name
    image_size: tuple[int, int] = (800, 1333)  # (H, W)
    variants: tuple[str, ...] = VARIANTS
    enact_cluster_size: int = 6

    def __post_init__(self):
        # the checks that were made before PlanSpec existed come first, so an input with several
        # problems reports the same one it always did
        if not isinstance(self.detectors, tuple) or not self.detectors or not all(
                isinstance(d, str) for d in self.detectors):
            raise ValueError("detectors must be a list of detector names")
        if not is_int(self.enact_cluster_size) or self.enact_cluster_size < 1:
            raise ValueError("enact_cluster_size must be an integer >= 1")
        from enact_bench.detectors.sources import check_source, is_source_name
        from enact_bench.errors import UserInputError

        known = known_detectors()
        for d in self.detectors:
            if is_source_name(d):  # hf:..., a factory (detectors/sources.py)
                try:
                    check_source(d)
                except UserInputError as e:
                    raise ValueError(f"detectors: {e}") from None
            elif d not in known:
                raise ValueError(f"detectors: unknown detector {d!r}; expected one of {', '.join(sorted(known))}")
        from enact_bench.predict.gpus import get_gpu

        try:
            object.__setattr__(self, "gpu", get_gpu(self.gpu).name)
        except ValueError as e:
            raise ValueError(f"gpu = {self.gpu!r}: {e}") from None
        size = self.image_size
        if not isinstance(size, tuple) or len(size) != 2 or not all(is_int(v) for v in size):
            raise ValueError(f'image_size = {size!r}: expected one size, "HxW" (e.g. "800x1333") or [H, W]')
        if min(size) < MIN_PLAN_SIDE_PX:
            raise ValueError(f"image_size = {size[0]}x{size[1]}: both sides must be >= {MIN_PLAN_SIDE_PX} pixels "
                             "(the backbone's stride)")

        if not isinstance(self.variants, tuple) or not self.variants or not all(
                v in ALL_VARIANTS for v in self.variants):
            written = list(self.variants) if isinstance(self.variants, tuple) else self.variants
            raise ValueError(f"variants = {written!r}: expected a list of one or more of {', '.join(ALL_VARIANTS)}")

    @classmethod
    def from_table(cls, table: Any, where: str) -> "PlanSpec":
        """The [plan] table as TOML gives it -> PlanSpec; a SuiteError naming `where` and the key."""
        if not isinstance(table, dict):
            raise SuiteError(f"{where}: [plan] must be a table with keys {', '.join(PLAN_KEYS)}")
        for k in table:
            if k not in PLAN_KEYS:
                raise SuiteError(f"{where}: [plan]: unknown key {k!r}; valid keys: {', '.join(PLAN_KEYS)}")
        dets = table.get("detectors")
        if not isinstance(dets, list) or not dets or not all(isinstance(d, str) for d in dets):
            raise SuiteError(f"{where}: [plan]: detectors must be a list of detector names")
        gpu = check_value("gpu", table.get("gpu", cls.gpu), where + " [plan]")
        size, dist = check_value("image_size", table.get("image_size", "800x1333"), where + " [plan]")
        variants = table.get("variants", list(cls.variants))
        try:
            return cls(tuple(dets), gpu, size or dist, tuple(variants) if isinstance(variants, list) else variants,
                       table.get("enact_cluster_size", cls.enact_cluster_size))
        except ValueError as e:
            raise SuiteError(f"{where}: [plan]: {e}") from None
