"""The autocast dtypes a suite case or `enact-bench plan` may name (parameters and optimizer state
stay float32). Plain Python, no torch: the suite checks and predict/ both read it, so neither
imports the other for it."""
from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")
