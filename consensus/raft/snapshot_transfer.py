"""Chunked snapshot transfer: the sending window and the receiving buffer.

How this works. A follower that needs compacted entries gets the leader's
snapshot in chunks of ``snapshot_chunk_bytes``. The leader (``Sending``) keeps up
to ``window`` chunks unacknowledged; the follower (``Receiving``) accepts a chunk
only at the offset it expects and answers every chunk with the offset it holds.

An acknowledgement that moves the offset forward only frees window slots: the
leader then sends as many new chunks as it freed, never one still in flight. The
leader goes back to the acknowledged offset and resends from there (go-back-N)
only on evidence of loss:

- duplicate acknowledgements: the follower answered chunks without moving on, so
  it got later chunks but not the one at that offset. One duplicate may be the
  link's doing (a duplicated chunk or answer), so it takes two when at least two
  chunks were sent after the missing one;
- an acknowledgement of offset 0 below what the follower had confirmed: it lost
  its buffer (it restarted, or moved to a new term);
- a timeout (``rewind``, driven by the node's tick): nothing was heard for a
  while, so chunks or answers were lost.

After going back, the answers still due for the chunks in flight and for the
resent ones are not taken as new evidence: they answer chunks sent behind a gap
already being repaired, or chunks the follower already holds. (Taking them as
evidence was the old message storm: each in-window answer sent the leader back
to resend the whole window, so chunks grew geometrically.) Should a resent chunk
be lost too, the timeout resends it. An answer below the confirmed offset other
than 0 is a stale one, overtaken on the way, and is ignored; but the timeout
goes back to the follower's latest answer if that is lower, so a follower that
restarted and then got a stale copy of the first chunk still completes.

The last chunk (``done``) makes the follower install the snapshot; it then
answers with an ordinary append response, which moves the leader back to
appends. A chunk of another snapshot (or from another leader) starting at offset
0 replaces the buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.raft.types import ConfState, Snapshot

__all__ = ["Receiving", "Sending"]


@dataclass(slots=True)
class Sending:
    """The leader's transfer of ``snapshot`` to one follower."""

    snapshot: Snapshot
    chunk_bytes: int
    window: int
    acked: int = 0
    """Bytes the follower confirmed holding, from the start."""
    sent: int = 0
    """Bytes sent so far (``acked <= sent``): the next chunk starts here."""
    finished: bool = False
    """The last chunk was sent (it may still be lost)."""
    reported: int = 0
    """The offset of the latest acknowledgement heard (below ``acked`` if it was a
    stale one, or the follower lost its buffer)."""
    excused: int = 0
    """Acknowledgements still due for chunks sent up to the last go-back: those
    that make no progress are not taken as evidence of a new loss."""
    going_back: bool = False
    """Gone back since the last ``next_chunks``: the chunks it sends are resends."""
    duplicates: int = 0
    """Acknowledgements of ``acked`` heard again since it moved (not excused)."""

    def next_chunks(self) -> list[tuple[int, bytes, bool]]:
        """The chunks (offset, data, done) the window allows to send now."""
        data = self.snapshot.data
        chunks: list[tuple[int, bytes, bool]] = []
        while not self.finished and self.sent - self.acked < self.window * self.chunk_bytes:
            end = min(self.sent + self.chunk_bytes, len(data))
            done = end >= len(data)
            chunks.append((self.sent, data[self.sent : end], done))
            self.sent = end
            self.finished = done
        if self.going_back:
            self.going_back = False
            self.excused += len(chunks)  # the resent chunks' answers are due as well
        return chunks

    def on_ack(self, offset: int) -> bool:
        """The follower holds ``offset`` bytes; True if that shows a loss, so the
        leader goes back to ``offset`` (the next ``next_chunks`` resends from there)."""
        offset = max(0, min(offset, len(self.snapshot.data)))
        self.reported = offset
        excused = self.excused > 0
        if excused:
            self.excused -= 1
        if offset > self.acked:
            # Progress: frees window slots, resends nothing.
            self.acked = offset
            self.duplicates = 0
            if offset > self.sent:  # it got further than the resends went
                self.sent = offset
                self.finished = offset >= len(self.snapshot.data)
                self.going_back = False
            return False
        if offset == 0 < self.acked:
            # The follower lost its buffer (restarted, or moved to a new term):
            # it starts again from 0. (A stale answer costs a window at most.)
            self._go_back(0)
            return True
        if excused:
            return False
        if offset == self.acked:
            # A chunk after ``offset`` arrived, the one at ``offset`` did not; or
            # the link duplicated a chunk or an answer. Two duplicates tell those
            # apart, when at least two chunks were sent after the missing one.
            behind = -(-(self.sent - offset) // self.chunk_bytes) - 1
            if behind < 1:
                return False  # nothing was sent after it
            self.duplicates += 1
            if self.duplicates < min(2, behind):
                return False
            self._go_back(offset)
            return True
        return False  # a stale acknowledgement, overtaken by a later one

    def rewind(self) -> None:
        """Nothing was heard for a while: resend from the last acknowledged offset
        (or from the follower's latest answer, if that is lower)."""
        self._go_back(min(self.acked, self.reported))
        self.excused = 0  # after a silence, the answers to what was in flight are lost

    def _go_back(self, offset: int) -> None:
        """Resend from ``offset <= acked``, from the next ``next_chunks`` on."""
        # Answers are still due for the chunks sent and not acknowledged.
        self.excused = -(-(self.sent - self.acked) // self.chunk_bytes)
        self.acked = min(self.acked, offset)
        self.sent = offset
        self.finished = False
        self.going_back = True
        self.duplicates = 0


@dataclass(slots=True)
class Receiving:
    """A follower's partly received snapshot."""

    source: bytes
    """The leader sending it; chunks from another leader start a new buffer, as
    two leaders may encode the same state differently."""
    source_term: int
    index: int
    term: int
    conf: ConfState
    total_bytes: int
    data: bytearray

    def accept(self, offset: int, chunk: bytes) -> bool:
        """Add ``chunk`` if it is the one expected next; False otherwise."""
        if offset != len(self.data) or len(self.data) + len(chunk) > self.total_bytes:
            return False
        self.data += chunk
        return True

    @property
    def complete(self) -> bool:
        """Whether every byte announced has arrived."""
        return len(self.data) == self.total_bytes

    def snapshot(self) -> Snapshot:
        """The assembled snapshot."""
        assert self.complete, (len(self.data), self.total_bytes)
        return Snapshot(self.index, self.term, self.conf, bytes(self.data))
