"""``trusted``: build a pydantic payload from values known to be valid, skipping validation.

Shared by the cores and drivers that build many payloads on hot paths (gossip,
membership, the KV service); receivers validate everything that arrives.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["trusted"]

M = TypeVar("M", bound=BaseModel)
_set_attribute = object.__setattr__


def trusted(model: type[M], values: dict[str, Any]) -> M:
    """A ``model`` instance holding ``values`` as given, without validation.

    For payloads a core builds on a hot path from its own, already valid state:
    validation would cost more than the rest of the work, and ``model_construct``
    is slower still (it resolves aliases and defaults field by field). ``values``
    must give every field, in declaration order, each as validation would have
    stored it; the result is then indistinguishable from a validated instance
    (equality, hashing, dumps). Receivers validate everything that arrives.
    """
    instance = model.__new__(model)
    _set_attribute(instance, "__dict__", values)
    _set_attribute(instance, "__pydantic_fields_set__", set(values))
    _set_attribute(instance, "__pydantic_extra__", None)
    _set_attribute(instance, "__pydantic_private__", None)
    return instance
