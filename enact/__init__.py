"""ENACT: entropy-based clustering of attention input for detection transformers.

Imports torch only. `EnactAttention` is a drop-in for nn.MultiheadAttention in an encoder;
`patch`/`unpatch` swap it into an existing model; `enact.ops` holds the tensor functions.
"""
from . import ops
from .attention import EnactAttention
from .config import EnactConfig
from .adapters import EnactSelfAttention
from .patch import patch, unpatch

__all__ = ["EnactConfig", "EnactAttention", "EnactSelfAttention", "patch", "unpatch", "ops"]
