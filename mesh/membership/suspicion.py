"""Lifeguard suspicion: a timeout that shrinks as other nodes confirm it.

How this works: when a member stops answering probes it is suspected, not yet
declared dead, so that it has time to hear the rumour and refute it. The time
allowed starts at a maximum and drops towards a minimum as independent
confirmations (other nodes suspecting the same member at the same incarnation)
arrive, on a logarithmic curve: the first confirmations count most. With ``K``
confirmations expected and ``c`` received, the timeout measured from the start
of the suspicion is::

    max(min_t, max_t - (max_t - min_t) * log(c + 1) / log(K + 1))

The minimum grows with the logarithm of the cluster size because gossip takes
that long to reach everyone (and so to reach the suspect, which must refute).
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "suspicion_timeout_min_s", "suspicion_timeout_s"]


def suspicion_timeout_min_s(multiplier: float, cluster_size: int, probe_interval_s: float) -> float:
    """Shortest suspicion timeout: ``multiplier * max(1, log10(n)) * probe_interval_s``."""
    scale = max(1.0, math.log10(max(1, cluster_size)))
    return multiplier * scale * probe_interval_s


def suspicion_timeout_s(
    confirmations: int, confirmations_expected: int, timeout_min_s: float, timeout_max_s: float
) -> float:
    """Timeout after ``confirmations`` of ``confirmations_expected`` (see module doc)."""
    if confirmations_expected < 1:
        return timeout_min_s
    fraction = math.log(confirmations + 1) / math.log(confirmations_expected + 1)
    return max(timeout_min_s, timeout_max_s - (timeout_max_s - timeout_min_s) * fraction)


class Suspicion:
    """One running suspicion of one member at one incarnation.

    ``originator`` is the node that raised it; it (and repeated confirmations
    from one node) does not count as an independent confirmation.
    """

    __slots__ = (
        "_confirmers",
        "_deadline",
        "_expected",
        "_max_s",
        "_min_s",
        "originator",
        "started_at",
    )

    def __init__(
        self,
        *,
        started_at: float,
        timeout_min_s: float,
        timeout_max_s: float,
        confirmations_expected: int,
        originator: bytes | None,
    ) -> None:
        assert 0 < timeout_min_s <= timeout_max_s, (timeout_min_s, timeout_max_s)
        assert confirmations_expected >= 0, confirmations_expected
        self.started_at = started_at
        self.originator = originator
        self._min_s = timeout_min_s
        self._max_s = timeout_max_s
        self._expected = confirmations_expected
        # A list, not a set: bounded by the expected count, and ordered.
        self._confirmers: list[bytes] = []
        # Kept up to date by ``confirm``: ``expired`` is asked on every tick.
        self._deadline = started_at + self.timeout_s()

    @property
    def confirmations(self) -> int:
        """Independent confirmations received so far."""
        return len(self._confirmers)

    def confirm(self, node_id: bytes) -> bool:
        """Count ``node_id`` as a confirmation; False if it adds nothing new."""
        if len(self._confirmers) >= self._expected:
            return False
        if node_id == self.originator or node_id in self._confirmers:
            return False
        self._confirmers.append(node_id)
        self._deadline = self.started_at + self.timeout_s()
        return True

    def timeout_s(self) -> float:
        """The current timeout, measured from ``started_at``."""
        return suspicion_timeout_s(len(self._confirmers), self._expected, self._min_s, self._max_s)

    def deadline(self) -> float:
        """When, on the driver's clock, the member is declared dead if nobody refutes."""
        return self._deadline

    def expired(self, now: float) -> bool:
        """Whether the suspicion has run out at ``now``."""
        return now >= self._deadline
