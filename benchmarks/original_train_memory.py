"""Tracked training-step peak of an ORIGINAL release's model, beside ours, with the same protocol.

    PYTHONPATH=$PWD python benchmarks/original_train_memory.py FAMILY RELEASE_DIR \
        [--size 128x160] [--batch 2] [--fake] [--opt k=v ...] [--argv ...]

FAMILY is one of detr, conditional, anchor, deformable, dino; RELEASE_DIR a checkout of the
release (facebookresearch/detr, Atten4Vis/ConditionalDETR, megvii-research/AnchorDETR,
fundamentalvision/Deformable-DETR, IDEA-Research/DINO). Nothing of the release is copied here:
this script imports it from RELEASE_DIR and runs it on CPU.

Protocol (the same for both models): torch.manual_seed(0), our registered detector built
(its full-size preset, `--opt` overrides), the release's model built from its own argument
parser / config with its defaults (`--argv` extra arguments, for DINO `k=v` config options)
and loaded strictly with our state_dict (the layouts are equal by design); torch.manual_seed(1)
and `make_batch(batch, size, 6 targets, 91 classes)`; `measure_train_step` (a warm-up AdamW
step, then the measured one: every live tensor, parameters, gradients and optimizer state
included). Deformable DETR and DINO use their pure-PyTorch deformable path on both sides (the
release's `ms_deform_attn_core_pytorch`; ours `msda="pytorch"`). `--fake` runs both under
FakeTensorMode (our estimate) with a fixed assignment instead of the Hungarian matcher; run
Python with -O then, because the releases' box asserts read data. One thread.

What it changes to run a release on a CPU-only torch 2.x (in this process only): `.cuda()` and
`.to("cuda")` become no-ops, ResNets are built without downloading weights, the compiled
MultiScaleDeformableAttention import is stubbed and its Function routed to the release's own
pure-PyTorch core, timm (Swin/ConvNeXt only) and tqdm are stubbed, and two names removed from
torch since (`_LinearWithBias`, `torch._overrides`) are aliased; DINO's config file is read
with exec (its SLConfig needs addict/yapf). Deformable DETR's util.misc reads the torchvision
version's first three characters as a float, so the version string is set to one it parses.
"""
from __future__ import annotations

import argparse
import sys
import types

import torch
import torchvision  # noqa: F401  (imported before any stub: torch._dynamo inspects module specs)
import torch._dynamo  # noqa: F401

from enact_bench.detectors import create_detector
from enact_bench.metrics import MIB
from enact_bench.data.batch import make_batch
from enact_bench.measure.train_step import measure_train_step
from enact_bench.predict.fake_step import FakeTensorMode, fake_model, use_fixed_assignment

OURS = {"detr": "detr_r50", "conditional": "conditional_detr_r50", "anchor": "anchor_detr_r50_dc5",
        "deformable": "deformable_detr_r50", "dino": "dino_r50_4scale"}


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules.setdefault(name, mod)


def _cpu_only() -> None:
    torch.Tensor.cuda = lambda self, *a, **k: self
    to = torch.Tensor.to

    def to_cpu(self, *args, **kwargs):
        def cpu(x):
            return "cpu" if str(x).startswith("cuda") else x
        args = tuple(cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = cpu(kwargs["device"])
        return to(self, *args, **kwargs)

    torch.Tensor.to = to_cpu


def _route_deformable_op(functions_module: str) -> None:
    _stub("MultiScaleDeformableAttention")
    funcs = __import__(functions_module, fromlist=["ms_deform_attn_core_pytorch"])
    core = funcs.ms_deform_attn_core_pytorch
    funcs.MSDeformAttnFunction.apply = staticmethod(
        lambda value, shapes, start, locations, weights, step: core(value, shapes, locations, weights))


def build_release(family: str, release: str, argv: list[str]):
    """(model, criterion, clip_max_norm) of the release, on CPU."""
    _cpu_only()
    _stub("tqdm", tqdm=lambda it=None, *a, **k: it)
    sys.path.insert(0, release)
    import torch.nn.modules.linear as linear
    if not hasattr(linear, "_LinearWithBias"):
        linear._LinearWithBias = linear.Linear
    import torch.overrides as overrides
    _stub("torch._overrides", has_torch_function=overrides.has_torch_function,
          handle_torch_function=overrides.handle_torch_function)
    if family == "dino":
        class Identity(torch.nn.Module):
            def __init__(self, *a, **k):
                super().__init__()

            def forward(self, x):
                return x
        _stub("timm")
        _stub("timm.models")
        _stub("timm.models.layers", DropPath=Identity, to_2tuple=lambda x: (x, x), trunc_normal_=lambda *a, **k: None)
        _route_deformable_op("models.dino.ops.functions.ms_deform_attn_func")
        cfg: dict = {}
        for name in ("config/DINO/coco_transformer.py", "config/DINO/DINO_4scale.py"):
            scope: dict = {}
            exec(open(f"{release}/{name}").read(), scope)  # noqa: S102  (the release's own config)
            cfg.update({k: v for k, v in scope.items() if not k.startswith("_")})
        # scripts/DINO_train.sh's options
        cfg.update(dict(dn_scalar=100, embed_init_tgt=True, dn_label_coef=1.0, dn_bbox_coef=1.0, use_ema=False,
                        dn_box_noise_scale=1.0))
        cfg.update({k: eval(v) for k, v in (a.split("=", 1) for a in argv)})  # noqa: S307
        cfg.update(dict(dataset_file="coco", device="cpu", distributed=False, rank=0, world_size=1, local_rank=0,
                        amp=False, fix_size=False, debug=False, frozen_weights=None, backbone_dir=None))
        args = argparse.Namespace(**cfg)
        import models.dino.backbone as backbone
        backbone.is_main_process = lambda: False  # no pretrained download
        import models.dino  # noqa: F401  (registers the builder)
        from models.registry import MODULE_BUILD_FUNCS
        model, criterion, _ = MODULE_BUILD_FUNCS.get(args.modelname)(args)
        return model, criterion, args.clip_max_norm
    if family == "deformable":
        torchvision.__version__ = "0.99+cpu"
        _route_deformable_op("models.ops.functions.ms_deform_attn_func")
    import main
    args = main.get_args_parser().parse_args(list(argv) + ["--device", "cpu"])
    import models.backbone as backbone
    backbone.is_main_process = lambda: False
    from models import build_model
    model, criterion, _ = build_model(args)
    return model, criterion, args.clip_max_norm


class ReleaseAdapter(torch.nn.Module):
    """Our step's call `model(images, mask, targets=...)` -> the release's forward."""

    def __init__(self, model: torch.nn.Module, passes_targets: bool):
        super().__init__()
        self.m = model
        self.passes_targets = passes_targets

    def forward(self, images, mask=None, targets=None):
        return self.m(images, targets) if self.passes_targets else self.m(images)


def measure(model, criterion, batch_size, size, clip, fake):
    torch.manual_seed(1)
    if not fake:
        return measure_train_step(model, criterion, make_batch(batch_size, size, 6, 91), clip_max_norm=clip)
    use_fixed_assignment(criterion)
    mode = FakeTensorMode(allow_non_fake_inputs=False)
    fake_model(model, mode)
    fake_model(criterion, mode)
    with mode:
        return measure_train_step(model, criterion, make_batch(batch_size, size, 6, 91), clip_max_norm=clip)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("family", choices=sorted(OURS))
    ap.add_argument("release")
    ap.add_argument("--size", default="128x160")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--fake", action="store_true")
    ap.add_argument("--opt", nargs="*", default=[], help="our detector's overrides, k=v (Python literals)")
    ap.add_argument("--only", choices=("release", "ours"), default=None,
                    help="measure one model only (one per process: the figures the tests pin were read so)")
    ap.add_argument("--argv", nargs=argparse.REMAINDER, default=[], help="the release's extra arguments")
    a = ap.parse_args()
    torch.set_num_threads(1)
    h, w = (int(x) for x in a.size.split("x"))
    overrides = {k: eval(v) for k, v in (o.split("=", 1) for o in a.opt)}  # noqa: S307
    if a.family in ("deformable", "dino"):
        overrides.setdefault("msda", "pytorch")
    torch.manual_seed(0)
    ours = create_detector(OURS[a.family], **overrides)
    found = {}
    if a.only != "ours":
        release, criterion, clip = build_release(a.family, a.release, a.argv)
        release.load_state_dict(ours.state_dict(), strict=True)
        found["release"] = measure(ReleaseAdapter(release, a.family == "dino"), criterion, a.batch, (h, w), clip,
                                   a.fake)
    if a.only != "release":
        found["ours"] = measure(ours, ours.build_criterion(), a.batch, (h, w), ours.grad_clip_max_norm or 0.0, a.fake)
    for label, m in found.items():
        print(f"{label:8s} peak_bytes={m.peak_bytes} ({m.peak_bytes / MIB:,.1f} MiB)  start_bytes={m.start_bytes}  "
              f"saved_for_backward_bytes={m.saved_for_backward_bytes}")
    if len(found) == 2:   # both in one process: the second can differ by a few KB (what the first left to the gc)
        d = found["ours"].peak_bytes - found["release"].peak_bytes
        print(f"ours - release = {d} B ({d / found['release'].peak_bytes * 100:+.4f}%)")


if __name__ == "__main__":
    main()
