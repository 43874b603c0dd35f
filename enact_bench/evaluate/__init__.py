"""Accuracy: COCO evaluation, the evaluation hook registry, the short training loop."""
from enact_bench.evaluate.coco_eval import STAT_NAMES, evaluate_detections, to_coco_results

__all__ = ["STAT_NAMES", "evaluate_detections", "to_coco_results"]
