"""The "coco" evaluation hook: COCOeval bbox mAP of a case's model on the val split of its
`coco` / `toy` data source (all val images, or the first --max-images), optionally after
`eval_train_steps` training steps on the train split (the toy suite uses them to get a
non-trivial mAP). Stored under the record's metrics["coco"].

The hook gets the case and its source (enact_bench.data.coco_source.CocoSource) as the
evaluation registry passes them; it reads only `case.batch_size` and `case.seed`.
"""
from __future__ import annotations

import torch

from enact_bench.data.coco import make_loader
from enact_bench.evaluate.registry import register_evaluation


@register_evaluation("coco", modes=("infer",), data=("coco", "toy"))
def evaluate_coco(model, case, source, device) -> dict:
    """COCOeval bbox stats of the model on val (after eval_train_steps training steps, if any)."""
    from enact_bench.evaluate.detection_eval import evaluate_model
    from enact_bench.evaluate.train_loop import train_steps

    val = source.dataset("val")
    loader = make_loader(val, case.batch_size, num_workers=source.num_workers, seed=case.seed)
    out: dict = {}
    if source.eval_train_steps > 0:
        out["map_before_training"] = evaluate_model(model, val, loader, device).stats["map"]
        train = source.dataset("train")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(case.seed)
            losses = train_steps(model, make_loader(train, max(2, case.batch_size), shuffle=True,
                                                    num_workers=source.num_workers, seed=case.seed),
                                 source.eval_train_steps, device, lr=source.eval_lr, lr_backbone=source.eval_lr)
        out["train_steps"] = source.eval_train_steps
        out["train_loss_first"], out["train_loss_last"] = losses[0], losses[-1]
    ev = evaluate_model(model, val, loader, device)
    ms = sorted(ev.batch_ms)
    out.update(ev.stats)
    out.update(images=len(ev.image_ids), detections=ev.detections,
               eval_batch_ms_p50=ms[len(ms) // 2] if ms else None)
    return out
