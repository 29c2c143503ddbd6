"""Client sessions: apply each ``(client_id, seq)`` once and answer retries identically.

How this works: a client numbers its requests 1, 2, 3, ... and retries a request
with the same number (possibly to another leader, so the log can hold it twice).
Per client id the store keeps the responses of its ``window`` highest applied
sequence numbers. For each request:

- ``seq`` has a stored response: a retry; answer that response, apply nothing.
- the window is full and ``seq`` is below all of it: it may or may not have been
  applied long ago (its response is gone), so refuse with ``stale_request``.
- otherwise ``seq`` was never applied: apply it and store its response, dropping
  the lowest one when the window overflows. Because the lowest is always the one
  dropped, every dropped number is below every kept one, which is what makes the
  rule above exact: requests may be applied out of order within the window (a
  pipelining client whose requests reach a new leader shuffled), never twice.

A client id with no session starts one with ``seq`` 1. With any other ``seq`` it
is refused as ``session_expired``: its session was most likely dropped (sessions
beyond ``sessions_max`` are dropped least recently used first, by apply order),
and applying it could apply a retry a second time. Known limit: a retry of a
client's *first* request arriving after its session was dropped is applied again;
a dropped session means ``sessions_max`` other clients were more recently active
since, which sizing should make rare.

Everything here is ordered by apply order only (an insertion-ordered dict moved to
the end on use), so every replica drops the same sessions.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator

from consensus.kvstore.responses import ErrorCode, Response

__all__ = ["Sessions"]


class _Session:
    """One client's stored responses, and their sequence numbers as a min-heap (so
    the oldest is found without a scan of the window on every request)."""

    __slots__ = ("responses", "seqs")

    def __init__(self) -> None:
        self.responses: dict[int, Response] = {}
        self.seqs: list[int] = []

    def oldest(self) -> int:
        return self.seqs[0]

    def store(self, seq: int, response: Response, window: int) -> None:
        self.responses[seq] = response
        heapq.heappush(self.seqs, seq)
        if len(self.seqs) > window:
            del self.responses[heapq.heappop(self.seqs)]


class Sessions:
    """Per-client windows of stored responses, least recently used first."""

    def __init__(self, sessions_max: int, window: int) -> None:
        self._sessions_max = sessions_max
        self._window = window
        # client id -> its session; order = least recently used first.
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def check(self, client_id: str, seq: int, index: int) -> Response | None:
        """The answer to ``(client_id, seq)`` if it must not be applied, else None.

        A stored response (a retry; the session counts as used), or a fresh
        ``stale_request`` / ``session_expired`` refusal at ``index`` (not stored:
        the request was not applied).
        """
        session = self._sessions.get(client_id)
        if session is None:
            if seq == 1:
                return None
            return Response(
                index,
                ErrorCode.SESSION_EXPIRED,
                detail=f"no session for this client and seq {seq} is not 1",
            )
        stored = session.responses.get(seq)
        if stored is not None:
            self._sessions.move_to_end(client_id)
            return stored
        if len(session.seqs) >= self._window:
            oldest = session.oldest()
            if seq < oldest:
                return Response(
                    index,
                    ErrorCode.STALE_REQUEST,
                    detail=f"seq {seq} is older than the oldest kept response ({oldest})",
                )
        return None

    def record(self, client_id: str, seq: int, response: Response) -> None:
        """Store the response of a request just applied (``check`` said None)."""
        session = self._sessions.get(client_id)
        if session is None:
            if len(self._sessions) >= self._sessions_max:
                self._sessions.popitem(last=False)
            session = self._sessions[client_id] = _Session()
        else:
            self._sessions.move_to_end(client_id)
        assert seq not in session.responses, (client_id, seq, session.responses[seq])
        session.store(seq, response, self._window)

    def export(self) -> Iterator[tuple[str, list[tuple[int, Response]]]]:
        """Every session, least recently used first, its responses by increasing seq."""
        for client_id, session in self._sessions.items():
            yield client_id, sorted(session.responses.items())

    def load(self, client_id: str, responses: list[tuple[int, Response]]) -> None:
        """Add a session from a snapshot (call in ``export`` order, seqs increasing).

        Restoring with smaller limits than the snapshot's keeps the most recently
        used sessions and the highest seqs, as applying would have.
        """
        assert client_id not in self._sessions, client_id
        if len(self._sessions) >= self._sessions_max:
            self._sessions.popitem(last=False)
        session = self._sessions[client_id] = _Session()
        for seq, response in responses[-self._window :]:
            session.store(seq, response, self._window)
