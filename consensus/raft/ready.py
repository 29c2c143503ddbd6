"""The output batch of the Raft core.

How this works: everything the driver must do after feeding the core is collected
into one frozen ``Ready``; its docstring fixes the order in which the driver
carries it out. The driver then calls ``RaftNode.advance(ready)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.core import Outgoing
from consensus.raft.types import Entry, HardState, ReadState, Snapshot, SoftState

__all__ = ["Ready"]


@dataclass(frozen=True, slots=True)
class Ready:
    """What the driver must do, in this order:

    1. Persist, and fsync before step 2: ``snapshot`` if not None
       (``apply_snapshot``, replacing the log), then ``entries`` (``append``, which
       may replace a suffix of the log), then ``hard_state`` if not None
       (``set_hard_state``).
    2. Send ``messages`` (every ``Outgoing`` has ``to_node`` set). They may vote,
       acknowledge entries or carry the commit index, so they must not leave
       before step 1 is durable.
    3. Apply to the state machine: ``snapshot`` first if not None, then
       ``committed_entries`` in order (entries of kind ``CONF_CHANGE`` are applied
       by the core itself in ``advance``; the state machine may skip them).
    4. Serve ``read_states``: each read may be answered once the state machine has
       applied its ``index``. ``soft_state`` (leader, role) is set when it
       changed since the previous Ready, for status and redirects.

    Then call ``RaftNode.advance(ready)`` before asking for the next Ready. The
    core may be stepped and ticked between ``ready()`` and ``advance()``.
    """

    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Outgoing, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    soft_state: SoftState | None = None

    @property
    def empty(self) -> bool:
        """Whether there is nothing to do."""
        return (
            self.hard_state is None
            and not self.entries
            and self.snapshot is None
            and not self.messages
            and not self.committed_entries
            and not self.read_states
            and self.soft_state is None
        )
