"""Gossip settings: every knob of the gossip core, its default and its trade-off.

How this works: one frozen dataclass, validated on construction. A bad value raises
``ValueError`` naming the field and the value, so a configuration mistake shows at
start-up rather than as a slow or stuck mesh. Limits are in the unit their name
says (``_s`` seconds, ``_bytes`` bytes, ``_max`` a count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from consensus.gossip.messages import (
    KEY_CHARS_WIRE_MAX,
    RECORD_OVERHEAD_BYTES,
    RECORDS_WIRE_MAX,
    VALUE_BYTES_WIRE_MAX,
)

__all__ = ["GossipSettings"]


@dataclass(frozen=True, slots=True)
class GossipSettings:
    """Tuning and limits of one gossip core (all defaults suit a few hundred nodes)."""

    round_interval_s: float = 0.2
    """Seconds between anti-entropy rounds. Shorter spreads updates sooner and costs
    ``fanout`` digests per node per round even when nothing changes."""
    fanout: int = 3
    """Peers contacted per round. More converges in fewer rounds at proportional
    message cost; 2-4 is the usual range."""
    rumor_retransmit_multiplier: int = 3
    """A record is piggybacked ``multiplier * ceil(log2(n + 1))`` times (n = cluster
    size) after it is written or learned. Higher reaches everyone sooner with more
    duplicates; 0 disables rumours and leaves spreading to anti-entropy alone."""
    rumor_queue_max: int = 4096
    """Records waiting to be rumoured. When full the oldest is dropped (counted as
    ``rumors_dropped``); anti-entropy still delivers it, only later."""
    rumors_per_message_max: int = 64
    """Rumours piggybacked on one digest message."""
    deltas_per_message_max: int = 512
    """Records in one deltas message. A larger backlog is sent lowest versions first
    over several exchanges, so one message stays small and one exchange short."""
    message_bytes_max: int = 512 * 1024
    """Estimated encoded size one gossip message may reach (records and rumours stop
    there). Keep it below the envelope size limit of the transport."""
    keys_max: int = 100_000
    """Records held: map keys including tombstones, plus OR-set tags. A local write
    beyond it raises ``ValueError``; a remote one is dropped and counted."""
    key_bytes_max: int = 256
    """UTF-8 length of a map key or OR-set name."""
    value_bytes_max: int = 64 * 1024
    """Encoded (msgpack) size of one value or set element. Local writes beyond it
    raise ``ValueError``; remote ones are dropped and counted."""
    tombstone_grace_s: float = 300.0
    """Least age (by its timestamp, against this node's wall clock) of a tombstone
    before it may be collected, on top of every live member having it. A member cut
    off for longer than this and declared dead, that still holds a value deleted
    meanwhile, keeps that value after it returns while the others do not (until the
    key is written again). Longer is safer and holds deleted keys' slots longer."""
    changes_max: int = 65_536
    """Change events kept until ``take_changes``; when full the oldest is dropped
    (counted as ``changes_dropped``). A driver drains after every step."""

    def __post_init__(self) -> None:
        if not (
            isinstance(self.round_interval_s, int | float)
            and math.isfinite(self.round_interval_s)
            and self.round_interval_s > 0
        ):
            raise ValueError(
                f"round_interval_s ({self.round_interval_s!r}) must be a positive number"
            )
        if not (
            isinstance(self.tombstone_grace_s, int | float)
            and math.isfinite(self.tombstone_grace_s)
            and self.tombstone_grace_s >= 0
        ):
            raise ValueError(
                f"tombstone_grace_s ({self.tombstone_grace_s!r}) must be a number >= 0"
            )
        _check_int("fanout", self.fanout, 1, 1024)
        _check_int("rumor_retransmit_multiplier", self.rumor_retransmit_multiplier, 0, 64)
        _check_int("rumor_queue_max", self.rumor_queue_max, 1, 10_000_000)
        _check_int("rumors_per_message_max", self.rumors_per_message_max, 0, RECORDS_WIRE_MAX)
        _check_int("deltas_per_message_max", self.deltas_per_message_max, 1, RECORDS_WIRE_MAX)
        _check_int("keys_max", self.keys_max, 1, 100_000_000)
        _check_int("key_bytes_max", self.key_bytes_max, 1, KEY_CHARS_WIRE_MAX)
        _check_int("value_bytes_max", self.value_bytes_max, 1, VALUE_BYTES_WIRE_MAX)
        _check_int("changes_max", self.changes_max, 1, 100_000_000)
        largest_record = self.value_bytes_max + 4 * self.key_bytes_max + RECORD_OVERHEAD_BYTES
        _check_int("message_bytes_max", self.message_bytes_max, 1024, 1 << 40)
        if self.message_bytes_max < largest_record:
            raise ValueError(
                f"message_bytes_max ({self.message_bytes_max}) must hold the largest record: "
                f"value_bytes_max ({self.value_bytes_max}) + 4 * key_bytes_max "
                f"({self.key_bytes_max}) + {RECORD_OVERHEAD_BYTES} = {largest_record}"
            )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} ({value!r}) must be an integer from {low} to {high}")
