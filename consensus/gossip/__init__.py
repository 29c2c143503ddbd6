"""Gossip: eventually consistent CRDT state spread by rumours and push-pull anti-entropy.

How this works: ``Gossip`` (in ``core``) is a pure protocol core, driven like every
other core by ``step``/``tick``/``take_outbox`` (see ``consensus.core``). It holds
a last-writer-wins map (``lww``) and named observed-remove sets (``orset``),
spreads every write as a versioned record (``versions``, ``rumors``), and forgets
tombstones once all live members have them (``tombstones``). ``messages`` is the
wire boundary, ``settings`` every knob with its default, ``values`` the canonical
encoding of values, ``changes`` the events a subscription API is built on.
"""

from consensus.gossip.changes import Change, ChangeKind
from consensus.gossip.core import COUNTER_NAMES, COUNTERS, Gossip
from consensus.gossip.lww import Entry, LWWMap
from consensus.gossip.messages import (
    DELTAS,
    DIGEST,
    MESSAGE_KINDS,
    GossipDeltas,
    GossipDigest,
    GossipRecord,
    writer_of,
)
from consensus.gossip.orset import ORSet, Tag
from consensus.gossip.settings import GossipSettings

__all__ = [
    "COUNTERS",
    "COUNTER_NAMES",
    "DELTAS",
    "DIGEST",
    "MESSAGE_KINDS",
    "Change",
    "ChangeKind",
    "Entry",
    "Gossip",
    "GossipDeltas",
    "GossipDigest",
    "GossipRecord",
    "GossipSettings",
    "LWWMap",
    "ORSet",
    "Tag",
    "writer_of",
]
