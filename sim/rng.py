"""Named random streams, all derived from one integer seed.

How this works: every consumer of randomness in a simulation (the network, the
disk, each node incarnation, the nemesis) asks ``Streams(seed).stream(name)`` for
its own ``random.Random``. The stream's seed is BLAKE2b over the run seed and the
name, so streams are independent of each other and of the order in which they
are created: adding a draw to the network cannot shift what a node's core sees.
Integer seeding of ``random.Random`` is stable across platforms and Python
versions, which is what makes a run replayable from its seed alone.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["Streams", "derive_bytes", "derive_seed"]


def derive_bytes(seed: int, name: str, size: int = 16) -> bytes:
    """``size`` bytes derived deterministically from ``seed`` and ``name``."""
    assert 1 <= size <= 64, size
    material = f"agentmesh.sim/{seed}/{name}".encode()
    return hashlib.blake2b(material, digest_size=size).digest()


def derive_seed(seed: int, name: str) -> int:
    """A 128-bit integer seed for the stream ``name`` of run ``seed``."""
    return int.from_bytes(derive_bytes(seed, name, 16), "big")


class Streams:
    """The factory of every random stream of one run."""

    __slots__ = ("seed",)

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def stream(self, name: str) -> random.Random:
        """A fresh ``random.Random`` for ``name``; the same name always gives the same sequence."""
        return random.Random(derive_seed(self.seed, name))

    def node_id(self, index: int) -> bytes:
        """The 16-byte id of node ``index`` in this run (like BLAKE2b of a public key)."""
        return derive_bytes(self.seed, f"node-id/{index}", 16)
