"""enact-bench: memory, time, FLOPs and mAP of detection transformers with and without ENACT."""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it)
