"""One measured configuration (Case) and its id: short, readable, and the same in every run."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from enact_bench.choices import DEFAULT_FAKE_TARGET, DTYPES, MODES, TARGETS
from enact_bench.suite.checks import LAUNCHERS

# Case keys that do not change what is measured, only how long or where: not in the case_id.
NOT_IN_ID = ("iters", "warmup", "device", "flops", "cpu_threads", "node_rank", "rdzv_endpoint",
             "trust_checkpoint")
# the parts every id starts with, in this order; the other fields follow when not their default
_ID_HEAD = ("detector", "enact", "mode", "batch_size", "image_size", "image_size_dist")


@dataclass(frozen=True)
class Case:
    """One measured configuration. Built by load_suite; every field validated there."""

    detector: str
    enact: bool = False
    enact_config: dict | None = None  # EnactConfig kwargs (None: the detector's default)
    mode: str = "train"  # train | infer
    device: str = "cpu"  # cpu | cuda | cuda:N (suites may say "auto"; resolved on load)
    dtype: str = "float32"  # autocast dtype; parameters stay float32
    batch_size: int = 2
    image_size: tuple[int, int] | None = None  # (H, W); None with image_size_dist
    image_size_dist: str | None = None  # "coco": DETR's multi-scale sizes
    data: str = "synthetic"
    data_options: dict = field(default_factory=dict)
    iters: int = 5  # timed iterations
    warmup: int = 2  # untimed iterations before them (the first one reported on its own)
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # extra create_detector(**overrides)
    checkpoint: str | None = None
    trust_checkpoint: bool = False  # read the checkpoint with the full unpickler (can run code)
    num_classes: int = 91
    clip_max_norm: float | None = None  # gradient clipping; None: the detector's own, 0: off
    tf32: bool = False
    cudnn_benchmark: bool = False
    flops: bool = True
    evaluate: tuple[str, ...] = ()
    cpu_threads: int | None = None  # torch.set_num_threads for the case (None: torch's default)
    fake: bool = False  # train step estimated under FakeTensorMode (shapes only; predict/fake_step.py)
    ddp: bool = False  # fake = true: add DistributedDataParallel's gradient buckets to the estimate
    # how the case runs: "process" (one subprocess) or "torchrun" (DDP ranks, run/torchrun.py)
    launcher: str = "process"
    nproc: int = 1  # torchrun: processes (ranks) on this node, one GPU each on CUDA
    nnodes: int = 1  # torchrun: nodes taking part (the same suite runs on each)
    node_rank: int = 0  # torchrun, nnodes > 1: this node's index (0 hosts rank 0 and the record)
    rdzv_endpoint: str | None = None  # torchrun, nnodes > 1: "host:port" of node 0
    # fake cases: whose kernels the estimate follows, "cuda" (what a GPU keeps; the default) or "cpu"
    # (the CPU's kernels, exact: the CI gate). None on a non-fake case; a fake case given None gets
    # "cuda" in __post_init__, so a fake case's target is always the one that ran.
    target: str | None = None
    gpu: str | None = None  # fake cases: GPU (predict/gpus.py) for the predicted allocator/device memory

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1 or self.iters < 1 or self.warmup < 1:
            raise ValueError("batch_size, iters and warmup must be >= 1")
        if self.image_size is not None and self.image_size_dist is not None:
            raise ValueError("give image_size or image_size_dist, not both")
        self._check_launch()
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if (self.target is not None or self.gpu is not None) and not self.fake:
            raise ValueError("target and gpu apply to fake = true cases (the estimate); set fake = true")
        if self.fake and self.target is None:
            object.__setattr__(self, "target", DEFAULT_FAKE_TARGET)

    def _check_launch(self) -> None:
        """launcher, nproc, nnodes, node_rank, rdzv_endpoint and ddp agree with each other."""
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.nproc < 1 or self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError("nproc and nnodes must be >= 1 and node_rank in 0 .. nnodes - 1")
        if self.launcher == "process" and (self.nproc, self.nnodes) != (1, 1):
            raise ValueError('nproc and nnodes need launcher = "torchrun"')
        if self.launcher == "torchrun":
            if self.fake:
                raise ValueError('fake = true estimates in one process: use ddp = true (not launcher = '
                                 '"torchrun") to add DDP\'s gradient buckets to the estimate')
            if re.fullmatch(r"cuda:\d+", self.device):
                raise ValueError('launcher = "torchrun" gives each rank cuda:LOCAL_RANK: say device = "cuda"')
            if self.nnodes > 1 and not self.rdzv_endpoint:
                raise ValueError('nnodes > 1 needs rdzv_endpoint = "host:port" (node 0, reachable from all nodes)')
        if self.ddp and not self.fake:
            raise ValueError('ddp = true belongs to fake = true estimates; to measure DDP say launcher = "torchrun"')

    @property
    def case_id(self) -> str:
        """Short, readable and stable: detector, variant, mode, batch, size (or the data source
        when the images keep their own sizes), then the fields that differ from their defaults.
        data_options, often long, appear as `opts=` and 8 hex digits of their sha256 (the record's
        case holds them in full). A fake case's target is named only when it is "cuda"
        (`-target=cuda`); a CPU-target one is unmarked, so CPU-target ids (the CI gate's
        baseline keys) carry no target. Synthetic cases read: detr_tiny-enact-train-b2-96x128."""
        if self.image_size:
            size = "x".join(map(str, self.image_size))
        else:
            size = self.image_size_dist or (self.data if self.data != "synthetic" else "nosize")
        parts = [self.detector, "enact" if self.enact else "base", self.mode,
                 f"b{self.batch_size}", size]
        default = Case(detector=self.detector)
        for f in fields(self):
            if f.name in NOT_IN_ID or f.name in _ID_HEAD:
                continue
            if f.name == "data" and size == self.data:
                continue  # already named by the size part
            if f.name == "target":
                # named only when "cuda": CPU-target fake cases keep the CI baseline's ids, and
                # the two targets of the same settings still differ in one suite
                if self.target == "cuda":
                    parts.append("target=cuda")
                continue
            value = getattr(self, f.name)
            if value != getattr(default, f.name) and value not in (None, {}, ()):
                parts.append(f"opts={options_hash(value)}" if f.name == "data_options"
                             else f"{f.name}={_slug(value)}")
        return "-".join(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        d["evaluate"] = list(self.evaluate)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        d = dict(d)
        d = {k: v for k, v in d.items() if k in {f.name for f in fields(cls)}}
        if d.get("fake") and "target" not in d:
            d["target"] = "cpu"  # a fake case recorded without a target ran the CPU's kernels
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        d["evaluate"] = tuple(d.get("evaluate") or ())
        return cls(**d)


# The keys a suite may set, in Case's field order (image_size_dist is set through image_size).
CASE_KEYS = tuple(f.name for f in fields(Case) if f.name != "image_size_dist")


def options_hash(options: dict) -> str:
    """8 hex digits of the sha256 of the options as sorted, compact JSON: the same options give
    the same digits on every machine and run."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug(value: Any) -> str:
    if isinstance(value, dict):
        text = ",".join(f"{k}={_slug(v)}" for k, v in sorted(value.items()))
    elif isinstance(value, (list, tuple)):
        text = "+".join(_slug(v) for v in value)
    elif isinstance(value, str) and ("/" in value or "\\" in value):
        text = Path(value).stem
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._=,+]", "_", text)
