"""TOML suite -> list of frozen Case dataclasses (defaults, matrix expansion, validation).

A suite file has `name`, `description`, a `[defaults]` table and a `[matrix]` table (or several
`[[matrix]]` tables, each expanded on its own and concatenated). In a matrix, a list is an axis
and a scalar is fixed for that group; the cases are the product of the axes, in file order.
Every key, its default and its valid values are in CASE_KEYS below and docs/harness.md.
Unknown keys, bad values and unknown detectors raise SuiteError naming the key and the file.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from enact_bench.choices import DEFAULT_FAKE_TARGET, DTYPES, MODES, TARGETS  # noqa: F401 -- re-exported
from enact_bench.errors import SuiteError, UserInputError

SIZE_DISTS = ("coco",)
LAUNCHERS = ("process", "torchrun")
TOP_KEYS = ("name", "description", "defaults", "matrix", "plan")
PLAN_KEYS = ("detectors", "gpu", "image_size", "variants", "enact_cluster_size")
# Case keys that do not change what is measured, only how long or where: not in the case_id.
NOT_IN_ID = ("iters", "warmup", "device", "flops", "cpu_threads", "node_rank", "rdzv_endpoint",
             "trust_checkpoint")


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
        if self.target is not None and self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if (self.target is not None or self.gpu is not None) and not self.fake:
            raise ValueError("target and gpu apply to fake = true cases (the estimate); set fake = true")
        if self.fake and self.target is None:
            object.__setattr__(self, "target", DEFAULT_FAKE_TARGET)

    @property
    def case_id(self) -> str:
        """Short, readable and stable: detector, variant, mode, batch, size (or the data source
        when the images keep their own sizes), then the fields that differ from their defaults.
        data_options, often long, appear as `opts=` and 8 hex digits of their sha256 (the record's
        case holds them in full). A fake case's target is named only when it is "cuda"
        (`-target=cuda`); a CPU-target one is unmarked, as before the CUDA target existed.
        Synthetic cases read as before: detr_tiny-enact-train-b2-96x128."""
        if self.image_size:
            size = "x".join(map(str, self.image_size))
        else:
            size = self.image_size_dist or (self.data if self.data != "synthetic" else "nosize")
        parts = [self.detector, "enact" if self.enact else "base", self.mode,
                 f"b{self.batch_size}", size]
        default = Case(detector=self.detector)
        for f in fields(self):
            if f.name in NOT_IN_ID or f.name in ("detector", "enact", "mode", "batch_size",
                                                  "image_size", "image_size_dist"):
                continue
            if f.name == "data" and size == self.data:
                continue  # already named by the size part
            if f.name == "target":
                # named only when "cuda": CPU-target fake cases keep the ids they had before the
                # CUDA target existed (the CI gate's baseline), and the two targets of the same
                # settings still differ in one suite
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
            d["target"] = "cpu"  # a case written before the target existed ran the CPU's kernels
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        d["evaluate"] = tuple(d.get("evaluate") or ())
        return cls(**d)


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


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: Path | None
    text: str  # the TOML as read (copied into reports/<run_id>/suite.toml)
    cases: tuple[Case, ...]
    plan: dict | None = None  # [plan]: full-size estimates `run` prints first (enact_bench.predict.plan)


# ---------------------------------------------------------------------------------------
# where shipped suites live
# ---------------------------------------------------------------------------------------
SUITES_PACKAGE_DIR = "suite_files"  # suites/ as installed inside the package (setup.py)


def suite_dirs() -> list[Path]:
    """Folders searched for `--suite NAME`: $ENACT_BENCH_SUITES (os.pathsep-separated), the
    package's own suite_files/ (a wheel or `pip install .`) and the repository's suites/ (a
    checkout or an editable `pip install -e .`)."""
    import enact_bench

    pkg = Path(enact_bench.__file__).resolve().parent
    dirs = [Path(p) for p in os.environ.get("ENACT_BENCH_SUITES", "").split(os.pathsep) if p]
    dirs += [pkg / SUITES_PACKAGE_DIR, pkg.parent / "suites"]
    return [d for d in dirs if d.is_dir()]


def list_suites() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def list_baselines() -> dict[str, Path]:
    """Shipped baselines by name (file stem): <suite folder>/baselines/*.json."""
    found: dict[str, Path] = {}
    for d in suite_dirs():
        for p in sorted((d / "baselines").glob("*.json")):
            found.setdefault(p.stem, p)
    return found


def find_baseline(name_or_path: str | os.PathLike) -> Path:
    """`--baseline ci-cpu` (a shipped baseline's name) or a path. A path is returned as given
    (it need not exist: `check --update` writes it); a bare name must be shipped."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.suffix == ".json" or os.sep in text or "/" in text or p.exists():
        if p.is_dir():
            raise UserInputError(f"--baseline {text}: is a folder; expected a baseline .json file "
                                 f"(e.g. suites/baselines/ci-cpu.json) or a shipped baseline name")
        return p
    shipped = list_baselines()
    if text in shipped:
        return shipped[text]
    raise UserInputError(f"unknown baseline {text!r}: expected a path to a .json file or a shipped "
                         f"baseline name ({', '.join(sorted(shipped)) or 'none shipped'})")


def find_suite(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix == ".toml" or os.sep in name_or_path or "/" in name_or_path:
        if not p.is_file():
            raise SuiteError(f"suite file not found: {p}")
        return p
    shipped = list_suites()
    if name_or_path in shipped:
        return shipped[name_or_path]
    if p.is_file():
        return p
    raise SuiteError(f"unknown suite {name_or_path!r}; shipped suites: {', '.join(sorted(shipped)) or 'none'}"
                     " (or give a path to a .toml file)")


# ---------------------------------------------------------------------------------------
# value checks: each returns the normalised value or raises SuiteError naming key and file
# ---------------------------------------------------------------------------------------
def _known_detectors() -> list[str]:
    """The registered detectors. A registry that fails to import is an error, never "any name"."""
    from enact_bench.detectors import list_detectors

    return list(list_detectors())


def parse_image_size(value: Any) -> tuple[tuple[int, int] | None, str | None]:
    """"HxW", [H, W] or "coco" -> (size, dist). Raises ValueError with what was expected."""
    expected = 'expected "HxW" (e.g. "800x1333"), [H, W] or "coco"'
    if isinstance(value, str):
        if value in SIZE_DISTS:
            return None, value
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
        if not m:
            raise ValueError(expected)
        h, w = int(m.group(1)), int(m.group(2))
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        h, w = value
    else:
        raise ValueError(expected)
    if h < 1 or w < 1:
        raise ValueError(f"image sides must be >= 1 ({expected})")
    return (h, w), None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


_CHOICES = {"mode": MODES, "dtype": DTYPES, "launcher": LAUNCHERS}  # keys whose value is one of a list


def _check(key: str, value: Any, where: str) -> Any:
    def bad(expected: str):
        return SuiteError(f"{where}: {key} = {value!r}: expected {expected}")

    if key == "detector":
        if not isinstance(value, str):
            raise bad("a detector name (string)")
        known = _known_detectors()
        if value not in known:
            raise bad("one of " + ", ".join(sorted(known)))
        return value
    if key in ("enact", "tf32", "cudnn_benchmark", "flops", "fake", "ddp", "trust_checkpoint"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise bad("one of " + ", ".join(_CHOICES[key]))
        return value
    if key == "device":
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise bad("auto, cpu, cuda or cuda:N")
        return value
    if key == "rdzv_endpoint":
        if not isinstance(value, str) or not re.fullmatch(r"[^\s:]+:\d+", value):
            raise bad('"host:port" of node 0 (torchrun --rdzv-endpoint)')
        return value
    if key == "node_rank":
        if not _is_int(value) or value < 0:
            raise bad("an integer >= 0")
        return value
    if key in ("batch_size", "iters", "warmup", "num_classes", "cpu_threads", "nproc", "nnodes"):
        if not _is_int(value) or value < 1:
            raise bad("an integer >= 1")
        return value
    if key == "seed":
        if not _is_int(value) or value < 0:
            raise bad("an integer >= 0")
        return value
    if key == "clip_max_norm":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise bad("a number >= 0 (0 turns clipping off)")
        return float(value)
    if key == "image_size":
        try:
            return parse_image_size(value)
        except ValueError as e:
            raise bad(str(e).removeprefix("expected ")) from None
    if key == "data":
        from enact_bench.data.sources import list_data_sources
        if value not in list_data_sources():
            raise bad("one of " + ", ".join(list_data_sources()))
        return value
    if key in ("overrides", "data_options"):
        if not isinstance(value, dict):
            raise bad("a table, e.g. {key = value}")
        return dict(value)
    if key == "enact_config":
        if not isinstance(value, dict):
            raise bad("a table of EnactConfig fields, e.g. {sigma = 3.0, backend = \"sdpa\"}")
        from enact import EnactConfig

        try:
            EnactConfig(**value)
        except (TypeError, ValueError) as e:
            raise SuiteError(f"{where}: enact_config = {value!r}: {e}") from None
        return dict(value)
    if key == "target":
        if value not in TARGETS:
            raise bad("one of " + ", ".join(TARGETS))
        return value
    if key == "gpu":
        from enact_bench.predict.gpus import get_gpu
        try:
            return get_gpu(value).name if isinstance(value, str) else get_gpu(str(value)).name
        except ValueError as e:
            raise SuiteError(f"{where}: gpu = {value!r}: {e}") from None
    if key == "checkpoint":
        if not isinstance(value, str) or not value:
            raise bad("a path to a checkpoint file (string)")
        return value
    if key == "evaluate":
        from enact_bench.evaluate.registry import list_evaluations
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise bad("a list of evaluation names")
        known = list_evaluations()
        for n in names:
            if n not in known:
                raise SuiteError(f"{where}: evaluate: unknown evaluation {n!r}; expected one of "
                                 f"{', '.join(known) or '(none registered)'}")
        return tuple(names)
    raise SuiteError(f"{where}: unknown key {key!r}; valid keys: {', '.join(CASE_KEYS)}")


CASE_KEYS = tuple(f.name for f in fields(Case) if f.name != "image_size_dist")
_LIST_VALUED = ("image_size", "evaluate")  # keys whose single value may itself be a list


def _is_single_value(key: str, value: Any) -> bool:
    if not isinstance(value, list):
        return True
    if key == "image_size":
        return len(value) == 2 and all(_is_int(v) for v in value)
    if key == "evaluate":
        return all(isinstance(v, str) for v in value)
    return False


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------
# loading and expansion
# ---------------------------------------------------------------------------------------
def parse_set_option(text: str) -> tuple[str, Any]:
    """`key=value` (value read as a TOML value, else as a plain string)."""
    if "=" not in text:
        raise SuiteError(f"--set {text!r}: expected key=value, e.g. --set iters=3")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _build_case(raw: dict, where: str, base_dir: Path | None) -> Case:
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        v = _check(key, value, where)
        if key == "image_size":
            kw["image_size"], kw["image_size_dist"] = v
        else:
            kw[key] = v
    if "detector" not in kw:
        raise SuiteError(f"{where}: no detector; set `detector` in [defaults] or [matrix]")
    kw["device"] = resolve_device(kw.get("device", "auto"))
    if not kw.get("enact", False):
        kw["enact_config"] = None  # a baseline has no ENACT config (keeps pairs' ids aligned)
    if kw.get("checkpoint") and base_dir is not None and not Path(kw["checkpoint"]).is_absolute():
        kw["checkpoint"] = str((base_dir / kw["checkpoint"]).resolve())
    if kw.get("checkpoint"):
        check_checkpoint_file(kw["checkpoint"], f"{where}: checkpoint = {raw['checkpoint']!r}")
    from enact_bench.data.sources import get_data_source
    spec = get_data_source(kw.get("data", "synthetic"))
    for opt in kw.get("data_options", {}):
        if opt not in spec.options:
            raise SuiteError(f"{where}: data_options: unknown key {opt!r} for data {spec.name!r}; "
                             f"valid keys: {', '.join(spec.options) or '(none)'}")
    if spec.name == "synthetic" and "image_size" not in kw:
        raise SuiteError(f'{where}: synthetic data needs image_size ("HxW", [H, W] or "coco")')
    _check_overrides(kw["detector"], kw.get("overrides", {}), where)
    _check_evaluations(kw.get("evaluate", ()), spec.name, where)
    if kw.get("fake") and kw.get("enact") and (kw.get("enact_config") or {}).get("cluster_size") is None:
        raise SuiteError(f"{where}: fake = true with ENACT needs a fixed cluster size (data-dependent shapes "
                         f"cannot be faked): set enact_config = {{cluster_size = 6}} in the suite, or pass "
                         f"--set enact_config.cluster_size=6")
    try:
        return Case(**kw)
    except ValueError as e:
        raise SuiteError(f"{where}: {e}") from None


def check_checkpoint_file(path: str | os.PathLike, what: str) -> None:
    """A checkpoint that is missing or is not a torch file fails at load, not in the case."""
    from enact_bench.detectors.checkpoint import looks_like_torch_file

    p = Path(path).expanduser()
    if not p.is_file():
        raise SuiteError(f"{what}: file not found")
    if not looks_like_torch_file(p):
        raise SuiteError(f"{what}: not a PyTorch checkpoint: {p} (expected a file written by torch.save)")


def _check_overrides(detector: str, overrides: dict, where: str) -> None:
    """Overrides the detector does not take are errors now, not after the suite started."""
    from enact_bench.detectors import get_spec

    valid = get_spec(detector).overrides
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise SuiteError(f"{where}: overrides: unknown key(s) {', '.join(map(repr, unknown))} for detector "
                         f"{detector!r}; valid keys: {', '.join(valid)}")


def _check_evaluations(names: tuple[str, ...], data: str, where: str) -> None:
    """An evaluation that needs other data (EvaluationSpec.data) fails at load, not after measuring."""
    from enact_bench.evaluate.registry import get_evaluation

    for name in names:
        needs = get_evaluation(name).data
        if needs is not None and data not in needs:
            raise SuiteError(f"{where}: evaluate = [{name!r}] needs data = {' or '.join(map(repr, needs))}; "
                             f"this case has data = {data!r} (drop the evaluation or change data)")


def expand(doc: dict, where: str, overrides: list[tuple[str, list]] | None = None,
           base_dir: Path | None = None) -> list[Case]:
    """Expand a parsed suite document into cases; `overrides` (key, values) replace a key's
    value everywhere (several values make it an axis); dotted keys (`overrides.hidden_dim`)
    set one entry of a table."""
    for key in doc:
        if key not in TOP_KEYS:
            raise SuiteError(f"{where}: unknown top-level key {key!r}; valid keys: {', '.join(TOP_KEYS)}")
    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SuiteError(f"{where}: [defaults] must be a table")
    matrix = doc.get("matrix", [{}])
    groups = [matrix] if isinstance(matrix, dict) else matrix
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise SuiteError(f"{where}: matrix must be a table ([matrix]) or tables ([[matrix]])")
    for key in defaults:
        if key not in CASE_KEYS:
            raise SuiteError(f"{where}: [defaults]: unknown key {key!r}; valid keys: {', '.join(CASE_KEYS)}")
    raws: list[dict] = []
    for gi, group in enumerate(groups):
        axes, fixed = [], {}
        for key, value in group.items():
            if key not in CASE_KEYS:
                raise SuiteError(f"{where}: [matrix]: unknown key {key!r}; valid keys: {', '.join(CASE_KEYS)}")
            if _is_single_value(key, value):
                fixed[key] = value
            else:
                if not value:
                    raise SuiteError(f"{where}: [matrix]: {key} = []: an axis needs at least one value")
                axes.append((key, value))
        for combo in itertools.product(*(vals for _, vals in axes)):
            raws.append({**defaults, **fixed, **dict(zip((k for k, _ in axes), combo))})
    for key, values in overrides or []:
        head = key.split(".", 1)[0]
        if head not in CASE_KEYS:
            raise SuiteError(f"override {key!r}: unknown key; valid keys: {', '.join(CASE_KEYS)}")
        new = []
        for raw in raws:
            for v in values:
                r = dict(raw)
                if "." in key:
                    sub = key.split(".", 1)[1]
                    table = r.get(head) or {}
                    if not isinstance(table, dict):
                        raise SuiteError(f"override {key!r}: {head} is not a table")
                    r[head] = {**table, sub: v}
                else:
                    r[key] = v
                new.append(r)
        raws = new
    cases, seen = [], set()
    for raw in raws:
        case = _build_case(raw, where, base_dir)
        if case.case_id in seen:
            continue  # an override collapsed two cases into one
        seen.add(case.case_id)
        cases.append(case)
    return cases


def load_suite(name_or_path: str, overrides: list[tuple[str, list]] | None = None) -> Suite:
    path = find_suite(name_or_path)
    text = path.read_text()
    return load_suite_text(text, path=path, overrides=overrides)


def load_suite_text(text: str, path: Path | None = None,
                    overrides: list[tuple[str, list]] | None = None, base_dir: Path | None = None) -> Suite:
    """Parse suite text; relative checkpoint paths resolve against base_dir (default: the
    file's folder)."""
    where = str(path) if path else "<suite>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{where}: not valid TOML: {e}") from None
    name = doc.get("name", path.stem if path else "suite")
    description = doc.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise SuiteError(f"{where}: name and description must be strings")
    cases = expand(doc, where, overrides, base_dir=base_dir or (path.parent if path else None))
    if not cases:
        raise SuiteError(f"{where}: the suite expands to no cases")
    return Suite(name=name, description=description, path=path, text=text, cases=tuple(cases),
                 plan=_check_plan(doc.get("plan"), where))


def _check_plan(plan: Any, where: str) -> dict | None:
    """[plan]: detectors (list), gpu, image_size ("HxW"), variants (list), enact_cluster_size."""
    if plan is None:
        return None
    if not isinstance(plan, dict):
        raise SuiteError(f"{where}: [plan] must be a table with keys {', '.join(PLAN_KEYS)}")
    for k in plan:
        if k not in PLAN_KEYS:
            raise SuiteError(f"{where}: [plan]: unknown key {k!r}; valid keys: {', '.join(PLAN_KEYS)}")
    dets = plan.get("detectors")
    if not isinstance(dets, list) or not dets or not all(isinstance(d, str) for d in dets):
        raise SuiteError(f"{where}: [plan]: detectors must be a list of detector names")
    out = {"detectors": dets, "gpu": _check("gpu", plan.get("gpu", "h100-80gb"), where + " [plan]"),
           "image_size": list(_check("image_size", plan.get("image_size", "800x1333"), where + " [plan]")[0]),
           "variants": list(plan.get("variants", ["original", "fused", "enact"])),
           "enact_cluster_size": plan.get("enact_cluster_size", 6)}
    if not _is_int(out["enact_cluster_size"]) or out["enact_cluster_size"] < 1:
        raise SuiteError(f"{where}: [plan]: enact_cluster_size must be an integer >= 1")
    return out
