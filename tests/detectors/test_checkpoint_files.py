"""Checkpoint files as the originals' training scripts write them load with
torch.load(weights_only=True) and no trust flag; anything else is refused with one clear line.

What each original saves (read from its main.py at the commits below; every one ends an epoch
with `utils.save_on_master({...}, checkpoint_path)`):
- facebookresearch/detr 29901c5, fundamentalvision/Deformable-DETR 11169a6, and the three
  main.py of GSavathrakis/ENACT 360b9cc (DETR-, Conditional-DETR-, Anchor-DETR-ENACT):
  {"model": state_dict, "optimizer": AdamW state_dict, "lr_scheduler": StepLR state_dict,
   "epoch": int, "args": argparse.Namespace} (Anchor DETR: SGD instead of AdamW with --sgd).
- IDEA-Research/DINO faa8520: the same keys, plus "ema_model" (a second state_dict) with
  use_ema; its scheduler is StepLR, MultiStepLR (milestones: a collections.Counter) with
  multi_step_lr, or OneCycleLR with onecyclelr; its args Namespace also carries every value of
  the config file (numbers, strings, lists, dicts, None).
DETR's released weights were written by torch 1.5, in the legacy (non-zip) format: tested too.
"""
from __future__ import annotations

import argparse
import pickle

import pytest
import torch

from enact_bench.detectors import CheckpointMismatchError, create_detector, load_checkpoint
from enact_bench.detectors.checkpoint import NotACheckpointError, UntrustedCheckpointError


def _args(**extra) -> argparse.Namespace:
    # the kind of fields the originals' get_args_parser() defines (values as parsed: str, float, int, bool, None, list)
    return argparse.Namespace(lr=1e-4, lr_backbone=1e-5, batch_size=2, weight_decay=1e-4, epochs=300, lr_drop=200,
                              clip_max_norm=0.1, frozen_weights=None, backbone="resnet50", dilation=False,
                              position_embedding="sine", enc_layers=6, dec_layers=6, dataset_file="coco",
                              coco_path="/data/coco", output_dir="out", device="cuda", seed=42, resume="",
                              start_epoch=0, eval=False, num_workers=2, world_size=1, dist_url="env://",
                              distributed=False, **extra)


def _trained_state(model, optimizer_cls, scheduler):
    """One real step, so the optimizer state holds tensors, as after an epoch of training."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params[: len(params) // 2]}, {"params": params[len(params) // 2:], "lr": 1e-5}]
    opt = optimizer_cls(groups, lr=1e-4, **({"weight_decay": 1e-4} if optimizer_cls is torch.optim.AdamW
                                             else {"momentum": 0.9}))
    sched = scheduler(opt)
    loss = sum((p.float() ** 2).sum() for p in params)
    loss.backward()
    opt.step()
    sched.step()
    return opt.state_dict(), sched.state_dict()


STEP = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 200)  # noqa: E731
MULTI = lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[33, 45])  # noqa: E731
ONECYCLE = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-4, total_steps=100, pct_start=0.2)  # noqa: E731

ORIGINALS = [  # (original, our detector, enact, optimizer, scheduler, extra keys / args)
    ("detr", "detr_tiny", False, torch.optim.AdamW, STEP, {}),
    ("detr legacy format", "detr_tiny", False, torch.optim.AdamW, STEP, {"legacy": True}),
    ("deformable-detr", "deformable_detr_tiny", False, torch.optim.AdamW, STEP, {}),
    ("enact/DETR-ENACT", "detr_tiny", True, torch.optim.AdamW, STEP, {}),
    ("enact/Conditional-DETR-ENACT", "conditional_detr_tiny", True, torch.optim.AdamW, STEP, {}),
    ("enact/Anchor-DETR-ENACT", "anchor_detr_tiny", True, torch.optim.SGD, STEP, {}),
    ("dino", "dino_tiny", False, torch.optim.AdamW, STEP, {"ema": True}),
    ("dino multi_step_lr", "dino_tiny", False, torch.optim.AdamW, MULTI, {}),
    ("dino onecyclelr", "dino_tiny", False, torch.optim.AdamW, ONECYCLE, {}),
]


@pytest.mark.parametrize("original,name,enact,opt_cls,sched,extra", ORIGINALS, ids=[o[0] for o in ORIGINALS])
def test_original_training_checkpoint_loads_without_trust(original, name, enact, opt_cls, sched, extra, tmp_path):
    torch.manual_seed(0)
    src = create_detector(name, enact=enact)
    opt_state, sched_state = _trained_state(src, opt_cls, sched)
    args = _args()
    if original.startswith("dino"):  # DINO merges its config file into args (config/DINO/DINO_4scale.py)
        args = _args(lr_drop_list=[33, 45], multi_step_lr="multi_step" in original, onecyclelr="one" in original,
                     use_ema=bool(extra.get("ema")), options=None, dn_number=100, return_interm_indices=[1, 2, 3],
                     data_aug_scales=[480, 512, 544], matcher_type="HungarianMatcher", dec_layer_number=None,
                     decoder_module_seq=["sa", "ca", "ffn"], backbone_freeze_keywords=None)
    ckpt = {"model": src.state_dict(), "optimizer": opt_state, "lr_scheduler": sched_state, "epoch": 49,
            "args": args}
    if extra.get("ema"):
        ckpt["ema_model"] = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not extra.get("legacy"))
    # plain weights_only refuses the Namespace: this is what the allow-list is for
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    torch.manual_seed(1)
    dst = create_detector(name, enact=enact)
    assert not all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    report = load_checkpoint(dst, path)
    assert report.ok
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("this is not a checkpoint\n" * 20)
    model = create_detector("detr_tiny")
    with pytest.raises(NotACheckpointError, match=r"^not a PyTorch checkpoint: .*weights\.pth"):
        load_checkpoint(model, path)


def test_truncated_checkpoint_is_not_a_checkpoint(tmp_path):
    model = create_detector("detr_tiny")
    torch.save({"model": model.state_dict()}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:4096])
    with pytest.raises(NotACheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "cut.pth")


class _Arbitrary:  # a class no original pickles: refused without trust
    def __init__(self):
        self.x = 1


def test_foreign_object_needs_trust(tmp_path):
    model = create_detector("detr_tiny")
    path = tmp_path / "other.pth"
    torch.save({"model": model.state_dict(), "extra": _Arbitrary()}, path)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint.*can run code"):
        load_checkpoint(model, path)
    assert load_checkpoint(model, path, trust=True).ok


def test_mismatch_first_line_names_the_keys():
    model = create_detector("detr_tiny")
    state = dict(model.state_dict())
    missing = sorted(state)[:4]
    for k in missing:
        del state[k]
    state["foo.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    first = str(info.value).splitlines()[0]
    assert first.startswith("checkpoint does not fit detr_tiny: 4 missing keys (")
    in_model_order = [k for k in model.state_dict() if k in missing]
    assert f"({', '.join(in_model_order[:3])}, ...)" in first and "1 unexpected key (foo.weight)" in first
