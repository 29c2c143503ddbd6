"""msgpack encoding with limits, the bottom of the wire path.

Every byte string that reaches the node is decoded here with explicit limits, so
that a hostile frame cannot make the decoder allocate more than the frame itself
allows. Encoding is canonical for the structures we build: lists, not maps, for
headers (positional and compact), bin for bytes, str for text.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.errors import CodecError

__all__ = ["pack", "unpack"]

# Shared, as in ``consensus.kvstore.wire``: it resets after every pack, and a pack
# without a ``default`` hook is one C call under the GIL.
_PACKER = msgpack.Packer(use_bin_type=True)


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (bytes become bin, str becomes str)."""
    return _PACKER.pack(obj)  # type: ignore[no-any-return]


def unpack(data: bytes, *, max_bytes: int) -> Any:
    """Decode one msgpack object from ``data``, refusing anything malformed.

    Raises ``CodecError`` for invalid msgpack, trailing bytes, non-string map
    keys, or containers larger than ``max_bytes`` permits.
    """
    if len(data) > max_bytes:
        raise CodecError(f"frame of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_bytes,
            max_map_len=max_bytes // 2,
            max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CodecError(f"invalid msgpack: {exc}") from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # msgpack raises ValueError for truncated input and limit violations,
        # TypeError for unhashable map keys.
        raise CodecError(f"invalid msgpack: {exc}") from exc
