"""Whose kernels a fake-tensor estimate follows: the one list of targets, for the suite checks and
for predict/ (plain Python, no torch).

"cuda": the kernels a CUDA GPU picks (fused SDPA, foreach AdamW; predict/cuda_policy.py), what a
GPU keeps. "cpu": the CPU's own kernels, whose bytes a CPU reproduces exactly (the CI gate).
"""
from __future__ import annotations

TARGETS = ("cpu", "cuda")
DEFAULT_FAKE_TARGET = "cuda"  # a fake case that names no target estimates what a CUDA GPU keeps
