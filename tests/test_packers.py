"""The shared msgpack packers give what a fresh ``packb`` gives, after any failure too."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.kvstore import wire
from mesh import codec

PACKERS = [codec.pack, wire.pack]
VALUES = st.recursive(
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


def fresh(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("pack", PACKERS)
@given(first=VALUES, second=VALUES)
def test_a_shared_packer_packs_as_a_fresh_one_even_after_a_refused_value(
    pack: Any, first: Any, second: Any,
) -> None:
    assert pack(first) == fresh(first)
    with pytest.raises(TypeError):
        pack([first, object()])  # refused part-way through the list
    with pytest.raises((OverflowError, ValueError)):
        pack([first, 2**64])
    assert pack(second) == fresh(second)


@pytest.mark.parametrize("pack", PACKERS)
def test_threads_packing_at_once_each_get_their_own_bytes(pack: Any) -> None:
    values = [[n, "x" * n, bytes(n), [n] * (n % 7)] for n in range(200)]
    expected = [fresh(v) for v in values]
    mismatches: list[int] = []

    def worker() -> None:
        for _ in range(50):
            for number, value in enumerate(values):
                if pack(value) != expected[number]:
                    mismatches.append(number)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert mismatches == []
