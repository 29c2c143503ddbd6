"""Values as canonical msgpack bytes: the form gossip stores, compares and sends.

How this works: a value written locally is checked (only None, bool, int, float,
str, bytes, lists/tuples and dicts with str keys) and encoded once, with dict keys
sorted, so equal values give equal bytes on every node. From then on the core keeps
and forwards those bytes: a value is never re-encoded on its way through the mesh,
its size is ``len(bytes)``, two values are equal when their bytes are, and the
state fingerprint hashes them directly. Reads decode a fresh copy, so a caller who
mutates what ``get`` returned cannot change the store. Bytes received from a peer
are decoded once on arrival to prove they are well formed; undecodable bytes are
refused there, so a later read can never fail.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["MALFORMED_VALUE_ERRORS", "decode_value", "encode_value"]

MALFORMED_VALUE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)
"""What ``decode_value`` raises for bytes that are not one well-formed value: msgpack
signals truncation, trailing bytes, bad UTF-8, ext types and non-str map keys with
ValueError subclasses, unhashable map keys with TypeError."""

_SCALARS = (str, int, float, bool, bytes, type(None))
# msgpack's own nesting limit is 512; refuse a little earlier with our message.
_DEPTH_MAX = 256


def encode_value(value: Any) -> bytes:
    """Canonical msgpack bytes of ``value``.

    Raises ``TypeError`` for a type gossip cannot carry (sets, objects, dicts
    with non-str keys) and ``ValueError`` for integers msgpack cannot represent
    or nesting deeper than 256 levels.
    """
    plain = value if type(value) in _SCALARS else _canonical(value, 0)
    try:
        return msgpack.packb(plain, use_bin_type=True)  # type: ignore[no-any-return]
    except OverflowError as exc:
        raise ValueError(f"value cannot be encoded: {exc}") from exc


def decode_value(data: bytes) -> Any:
    """Decode one value; raises one of ``MALFORMED_VALUE_ERRORS`` for bad bytes."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0)


def _canonical(value: Any, depth: int) -> Any:
    if depth > _DEPTH_MAX:
        raise ValueError(f"value nests deeper than {_DEPTH_MAX} levels")
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_canonical(item, depth + 1) for item in value]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, not {type(key).__name__}: {key!r}")
        return {key: _canonical(value[key], depth + 1) for key in sorted(value)}
    raise TypeError(
        f"gossip values are None, bool, int, float, str, bytes, list or dict; "
        f"got {type(value).__name__}"
    )
