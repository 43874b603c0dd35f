"""enact-bench: memory, time, FLOPs and mAP of detection transformers with and without ENACT."""
