"""Chunked snapshot transfer: the sending window and the receiving buffer.

How this works. A follower that needs compacted entries gets the leader's
snapshot in chunks of ``snapshot_chunk_bytes``. The leader (``Sending``) keeps up
to ``window`` chunks unacknowledged; the follower (``Receiving``) accepts a chunk
only at the offset it expects and answers every chunk with that offset, so a
lost or reordered chunk makes the leader go back to it (go-back-N). When the
leader hears nothing for a while it resends from the last acknowledged offset.
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
    """Bytes sent so far (``acked <= sent``)."""
    finished: bool = False
    """The last chunk was sent (it may still be lost)."""

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
        return chunks

    def on_ack(self, offset: int) -> None:
        """The follower holds ``offset`` bytes; go back there if it lost later ones."""
        offset = min(offset, len(self.snapshot.data))
        if offset > self.acked:
            self.acked = offset
        if offset < self.sent:
            # It expects ``offset``: chunks after it were lost or arrived out of order.
            self.rewind(offset)

    def rewind(self, offset: int | None = None) -> None:
        """Resend from ``offset`` (default: the last acknowledged one)."""
        self.sent = self.acked if offset is None else offset
        self.finished = False


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
