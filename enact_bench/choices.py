"""The closed sets of words a case, a plan and the CLI accept, defined once (torch-free)."""

MODES = ("train", "infer")
DTYPES = ("float32", "bfloat16", "float16")  # float32, or autocast to bfloat16 / float16
TARGETS = ("cpu", "cuda")  # whose kernels a fake step follows (predict/cuda_policy.py)
DEFAULT_FAKE_TARGET = "cuda"  # a fake case without `target` estimates what a CUDA GPU keeps
VARIANTS = ("original", "fused", "enact", "enact+fused")  # what `plan` compares, and its default list
# a source model's (hf:..., factories; detectors/sources.py) variant besides these: HF's eager attention
SOURCE_ONLY_VARIANTS = ("eager",)
ALL_VARIANTS = VARIANTS + SOURCE_ONLY_VARIANTS
