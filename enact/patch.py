"""patch(model, where=..., config=...) / unpatch(model): swap attention modules in place.

Each selected module is replaced through the adapter that accepts it (enact/adapters.py):
nn.MultiheadAttention becomes an EnactAttention; a q/k/v/o-projection self-attention (HF
transformers' DETR family) an EnactSelfAttention with the host's call signature. The replaced
modules are kept (the same objects) so that unpatch puts them back exactly.
"""
from __future__ import annotations

from typing import Callable, Union

from torch import nn

from .adapters import adapter_for, why_no_adapter
from .config import EnactConfig

_REGISTRY = "_enact_originals"  # attribute on the root model: {qualified name: original module}

Where = Union[None, type, tuple, Callable[[str, nn.Module], bool]]


def _selector(where: Where) -> Callable[[str, nn.Module], bool]:
    if where is None:
        return lambda name, m: isinstance(m, nn.MultiheadAttention)
    if isinstance(where, type) or (isinstance(where, tuple) and all(isinstance(t, type) for t in where)):
        return lambda name, m: isinstance(m, where)
    if callable(where):
        return where
    raise TypeError(
        f"where must be None (every nn.MultiheadAttention), a module type or tuple of types, or a "
        f"predicate (qualified_name, module) -> bool; got {where!r}"
    )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def patch(model: nn.Module, where: Where = None, config: EnactConfig | None = None) -> list[str]:
    """Replace the selected attention modules of `model` by ENACT copies holding their weights,
    in place (nn.MultiheadAttention: `EnactAttention.from_multihead_attention(m, config)`; a
    q/k/v/o self-attention: `EnactSelfAttention.from_projections(m, config)`). Returns their names.

    where: None (every nn.MultiheadAttention), a type or tuple of types, or a predicate
    `(qualified_name, module) -> bool`, e.g. `lambda n, m: n.startswith("transformer.encoder")
    and n.endswith("self_attn")`. A selected module that no adapter accepts is an error (nothing
    is replaced then).
    """
    if config is not None and not isinstance(config, EnactConfig):
        raise TypeError(f"config must be an EnactConfig or None; got {type(config).__name__}")
    select = _selector(where)
    chosen = [(n, m) for n, m in model.named_modules() if n and select(n, m)]
    adapters = []
    for name, module in chosen:
        adapter = adapter_for(module)
        if adapter is None:
            raise TypeError(f"patch replaces attention modules it has an adapter for; {name!r}: "
                            f"{why_no_adapter(module)} (narrow `where`)")
        adapters.append(adapter)
    if not chosen:
        raise ValueError("patch: `where` selected no module of the model")
    originals = model.__dict__.setdefault(_REGISTRY, {})
    for (name, module), adapter in zip(chosen, adapters):
        _set_submodule(model, name, adapter.build(module, config))
        originals[name] = module
    return [n for n, _ in chosen]


def unpatch(model: nn.Module) -> list[str]:
    """Put back the modules that `patch` replaced (the original objects). Returns their names."""
    originals = model.__dict__.pop(_REGISTRY, {})
    for name, module in originals.items():
        _set_submodule(model, name, module)
    return list(originals)
