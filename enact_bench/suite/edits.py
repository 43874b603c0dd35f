"""Per-run edits of a suite's cases from the command line: checkpoints per variant, the COCO root
and an image limit for the COCO-layout data sources.

    --checkpoint detr_r50=detr-r50-e632da11.pth          the baseline variant of detr_r50
    --checkpoint detr_r50+enact=detr_enact.pth           its ENACT variant
    --coco-root /data/coco    --max-images 500

They are saved in the run's run.json, so --resume applies them again. `CaseEdits.apply` only
edits cases; setting the environment and checking the COCO files is the caller's
(enact_bench.run.run_dir.edit_suite).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from enact_bench.errors import UserInputError
from enact_bench.suite.load import Suite

COCO_SOURCES = ("coco", "toy")
COCO_ENV_VAR = "ENACT_BENCH_COCO"  # enact_bench.data.coco.ENV_VAR (this module does not import data/)


@dataclass(frozen=True)
class CheckpointSpec:
    detector: str
    enact: bool
    path: str

    @classmethod
    def parse(cls, text: str) -> "CheckpointSpec":
        if "=" not in text:
            raise UserInputError(f"--checkpoint {text!r}: expected DETECTOR=PATH or DETECTOR+enact=PATH")
        left, path = (s.strip() for s in text.split("=", 1))
        detector, _, variant = left.partition("+")
        if variant not in ("", "enact"):
            raise UserInputError(f"--checkpoint {text!r}: the variant after '+' must be 'enact', got {variant!r}")
        if not detector or not path:
            raise UserInputError(f"--checkpoint {text!r}: expected DETECTOR=PATH or DETECTOR+enact=PATH")
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserInputError(f"--checkpoint {text!r}: file not found: {p}")
        from enact_bench.suite.checks import check_checkpoint_file
        check_checkpoint_file(p, f"--checkpoint {text!r}")
        return cls(detector, variant == "enact", str(p.resolve()))

    def label(self) -> str:
        return f"{self.detector}{'+enact' if self.enact else ''}={self.path}"


@dataclass(frozen=True)
class CaseEdits:
    checkpoints: tuple[CheckpointSpec, ...] = ()
    coco_root: str | None = None
    max_images: int | None = None

    def __post_init__(self):
        if self.max_images is not None and self.max_images < 1:
            raise UserInputError(f"--max-images must be >= 1, got {self.max_images}")
        keys = [(c.detector, c.enact) for c in self.checkpoints]
        if len(set(keys)) != len(keys):
            raise UserInputError("--checkpoint: the same variant was given twice")

    @classmethod
    def from_options(cls, checkpoints: list[str] | None = None, coco_root: str | os.PathLike | None = None,
                     max_images: int | None = None) -> "CaseEdits":
        root = str(Path(coco_root).expanduser().resolve()) if coco_root else None
        return cls(tuple(CheckpointSpec.parse(t) for t in checkpoints or ()), root, max_images)

    @property
    def empty(self) -> bool:
        return not self.checkpoints and self.coco_root is None and self.max_images is None

    def to_json(self) -> dict:
        return {"checkpoints": [c.label() for c in self.checkpoints], "coco_root": self.coco_root,
                "max_images": self.max_images}

    @classmethod
    def from_json(cls, d: dict | None) -> "CaseEdits":
        d = d or {}
        return cls.from_options(d.get("checkpoints"), d.get("coco_root"), d.get("max_images"))

    def environment(self) -> dict[str, str]:
        """Environment variables the case processes need: --coco-root as $ENACT_BENCH_COCO (so
        case ids do not change). The caller sets them (enact_bench.run.run_dir.edit_suite)."""
        return {COCO_ENV_VAR: self.coco_root} if self.coco_root is not None else {}

    def apply(self, suite: Suite) -> Suite:
        """The suite with its cases edited: a pure function of the suite and these edits (no
        environment, no files). An unused --checkpoint is an error naming the suite's variants."""
        cases, used = [], set()
        for case in suite.cases:
            changes: dict = {}
            for spec in self.checkpoints:
                if spec.detector == case.detector and spec.enact == case.enact:
                    changes["checkpoint"] = spec.path
                    used.add(spec)
            if case.data in COCO_SOURCES and self.max_images is not None:
                changes["data_options"] = {**case.data_options, "max_images": self.max_images}
            cases.append(dataclasses.replace(case, **changes) if changes else case)
        unused = [s for s in self.checkpoints if s not in used]
        if unused:
            variants = sorted({f"{c.detector}{'+enact' if c.enact else ''}" for c in suite.cases})
            raise UserInputError(f"--checkpoint {unused[0].label()}: no case of suite {suite.name!r} is that "
                                 f"variant; its variants: {', '.join(variants)}")
        return dataclasses.replace(suite, cases=tuple(cases))
