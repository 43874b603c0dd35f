"""ForeignDetector: a model we did not write (HF transformers', a user's factory) behind the members
the harness takes from a Detector (docs/CONTRACTS.md), so the run, the fake step and the plan
treat it like a preset:

- `forward(images, mask=None, targets=None) -> {"output": <the model's output>}`: the images
  padded into `pixel_values` (B, 3, H, W) with `pixel_mask` (B, H, W) int64 (1 = image), the
  targets passed in HF's form (or through the spec's `make_batch`) in training;
- `build_criterion()`: an OutputLoss whose one term is the model's loss (the output's `.loss`,
  or the spec's `loss_fn`), weight 1;
- `param_groups()`, `default_optimizer_kwargs`, `grad_clip_max_norm`: the spec's recipe;
- `postprocess()`, `enact_stats()`, and the labels `name`, `family`, `attention`, `enact_config`.

Its state_dict is the wrapped model's under `model.`; `checkpoint_module()` is the wrapped model,
whose own keys a checkpoint of it (save_pretrained, torch.save(model.state_dict())) has.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from enact_bench.errors import UserInputError

from .base import Detector
from .model_spec import ModelSpec


class ModelOutputError(UserInputError):
    """The model's output has no loss (and the spec no loss_fn)."""


def output_field(out, key: str):
    """`out.key` or `out[key]` (HF's ModelOutput is both); None when absent."""
    value = getattr(out, key, None)
    if value is None and isinstance(out, dict):
        value = out.get(key)
    return value


class OutputLoss(nn.Module):
    """The criterion of a foreign model: {"loss": the model's loss}, weight 1."""

    weight_dict = {"loss": 1.0}
    matcher_in_model = True  # no `matcher` to swap for a fake step: the fake-tensor policy answers the model's own

    def __init__(self, loss_fn=None, name: str = "the model"):
        super().__init__()
        self.loss_fn = loss_fn
        self.model_name = name

    def forward(self, outputs: dict, targets: list[dict]) -> dict:
        out = outputs["output"]
        if self.loss_fn is not None:
            loss = self.loss_fn(out, targets)
        else:
            loss = output_field(out, "loss")
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            got = "no loss" if loss is None else f"a loss of type {type(loss).__name__}"
            raise ModelOutputError(f"{self.model_name}: the output has {got} (expected a 0-dim tensor: the model's "
                                   f"`.loss` when given labels, or a ModelSpec loss_fn)")
        return {"loss": loss}


# module names -> the presets' breakdown groups (instrument/breakdown.py): HF's DETR family
# (backbone, input_projection, encoder, decoder, class_labels_classifier, bbox_predictor,
# class_embed, bbox_embed, enc_score_head, enc_bbox_head, YOLOS's ViT embeddings) and the like
_GROUP_NAMES = {
    "backbone": "backbone", "embeddings": "backbone",
    "input_proj": "input_proj", "input_projection": "input_proj", "encoder_input_proj": "input_proj",
    "decoder_input_proj": "input_proj",
    "encoder": "encoder", "decoder": "decoder",
    "class_labels_classifier": "heads", "bbox_predictor": "heads", "class_embed": "heads", "bbox_embed": "heads",
    "enc_score_head": "heads", "enc_bbox_head": "heads", "class_head": "heads", "box_head": "heads",
}


def module_group(name: str) -> str | None:
    return _GROUP_NAMES.get(name)


def hf_labels(targets: list[dict]) -> list[dict]:
    """DETR-style targets -> HF's labels (the same tensors: `labels` named `class_labels`)."""
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def pad_images(images, mask: Tensor | None, multiple: int = 1) -> tuple[Tensor, Tensor]:
    """(pixel_values (B, 3, H, W), pixel_mask (B, H, W) int64, 1 = image) from a list of
    (3, H_i, W_i) images (padded at the bottom and right to the largest, rounded up to
    `multiple`) or a padded tensor with its mask (True = padding)."""
    if isinstance(images, Tensor):
        b, _, h, w = images.shape
        if mask is None:
            return images, torch.ones(b, h, w, dtype=torch.long, device=images.device)
        return images, (~mask).long()
    h = -(-max(im.shape[1] for im in images) // multiple) * multiple
    w = -(-max(im.shape[2] for im in images) // multiple) * multiple
    if all(tuple(im.shape[1:]) == (h, w) for im in images):  # one size: no padding
        return torch.stack(images), torch.ones(len(images), h, w, dtype=torch.long, device=images[0].device)
    pixel_values = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    pixel_mask = torch.zeros(len(images), h, w, dtype=torch.long, device=images[0].device)
    for i, im in enumerate(images):
        pixel_values[i, :, :im.shape[1], :im.shape[2]].copy_(im)
        pixel_mask[i, :im.shape[1], :im.shape[2]] = 1
    return pixel_values, pixel_mask


class ForeignDetector(Detector):
    fake_policy = True  # a fake step answers its data-dependent code through predict/fake_policy.py

    def __init__(self, spec: ModelSpec, *, name: str, family: str, attention: str, num_classes: int,
                 enact_config=None, notes: tuple[str, ...] = ()):
        super().__init__()
        self.model = spec.model
        self.__dict__["spec"] = spec  # not a submodule: spec.model is registered above as `model`
        self.name, self.family, self.attention = name, family, attention
        self.num_classes = num_classes
        self.enact_config = enact_config
        self.default_optimizer_kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay}
        self.default_lr_backbone = spec.lr_backbone
        self.grad_clip_max_norm = spec.clip_max_norm or None
        self.size_multiple = spec.size_multiple
        self.notes = tuple(notes) + tuple(spec.notes)

    @property
    def breakdown_rules(self) -> tuple[tuple[str, str], ...]:
        """(path prefix, group) for instrument/breakdown.py: the wrapped model's own paths mapped to
        the presets' groups by their names (module_group)."""
        rules = []
        taken: list[str] = []  # paths of backbone / encoder / decoder found: their insides stay theirs
        for path, _ in self.named_modules():
            group = module_group(path.rsplit(".", 1)[-1])
            if group is None:
                continue
            if group != "heads" and any(path.startswith(t + ".") for t in taken):
                continue
            rules.append((path, group))
            if group != "heads":
                taken.append(path)
        return tuple(rules)

    def checkpoint_module(self) -> nn.Module:
        return self.model

    def forward(self, images, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        pixel_values, pixel_mask = pad_images(images, mask, self.size_multiple)
        train_targets = targets if (self.training and targets is not None) else None
        if self.spec.make_batch is not None:
            kwargs = self.spec.make_batch(pixel_values, pixel_mask, train_targets)
        else:
            kwargs = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
            if train_targets is not None:
                kwargs["labels"] = hf_labels(train_targets)
        return {"output": self.model(**kwargs)}

    def build_criterion(self) -> nn.Module:
        return OutputLoss(self.spec.loss_fn, self.name)

    def param_groups(self, lr: float | None = None, lr_backbone: float | None = None,
                     weight_decay: float | None = None) -> list[dict]:
        if self.spec.param_groups is None:
            return super().param_groups(lr, lr_backbone, weight_decay)
        groups = [dict(g) for g in self.spec.param_groups(self.model)]
        for g in groups:
            g.setdefault("lr", self.default_optimizer_kwargs["lr"] if lr is None else lr)
            g.setdefault("weight_decay", self.default_optimizer_kwargs["weight_decay"]
                         if weight_decay is None else weight_decay)
        return groups

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Per image the best class of every query: softmax without the last ("no object") class
        when the logits have num_classes + 1 columns, else sigmoid; boxes cxcywh -> absolute xyxy."""
        out = outputs["output"]
        logits, boxes = output_field(out, "logits"), output_field(out, "pred_boxes")
        if logits is None or boxes is None:
            raise ModelOutputError(f"{self.name}: inference needs the output's logits and pred_boxes")
        if logits.shape[-1] == self.num_classes + 1:
            scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        else:
            scores, labels = logits.sigmoid().max(-1)
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)  # (B, Q, 4)
        img_h, img_w = target_sizes.unbind(1)
        scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(xyxy.dtype)  # (B, 4)
        xyxy = xyxy * scale[:, None, :]
        return [{"scores": s, "labels": lab, "boxes": b} for s, lab, b in zip(scores, labels, xyxy)]

    def enact_modules(self):
        from enact import EnactAttention

        return (m for m in self.model.modules() if isinstance(m, EnactAttention))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", model={type(self.model).__name__}"
