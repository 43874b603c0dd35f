"""Measurement: memory (CUDA, NVML, CPU), timing, FLOPs, COCO evaluation."""
from enact_bench.measure.coco_eval import STAT_NAMES, evaluate_detections, to_coco_results

__all__ = ["STAT_NAMES", "evaluate_detections", "to_coco_results"]
