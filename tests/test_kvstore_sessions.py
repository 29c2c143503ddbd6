"""Client sessions (``consensus.kvstore.sessions``) against a plain reference model."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.kvstore import ErrorCode, Response
from consensus.kvstore.sessions import Sessions


class _Reference:
    """The rules of the module doc, spelled out with a scan of each window."""

    def __init__(self, sessions_max: int, window: int) -> None:
        self.sessions_max, self.window = sessions_max, window
        self.sessions: OrderedDict[str, dict[int, Response]] = OrderedDict()

    def check(self, client_id: str, seq: int) -> ErrorCode | Response | None:
        session = self.sessions.get(client_id)
        if session is None:
            return None if seq == 1 else ErrorCode.SESSION_EXPIRED
        if seq in session:
            self.sessions.move_to_end(client_id)
            return session[seq]
        if len(session) >= self.window and seq < min(session):
            return ErrorCode.STALE_REQUEST
        return None

    def record(self, client_id: str, seq: int, response: Response) -> None:
        session = self.sessions.get(client_id)
        if session is None:
            if len(self.sessions) >= self.sessions_max:
                self.sessions.popitem(last=False)
            session = self.sessions[client_id] = {}
        else:
            self.sessions.move_to_end(client_id)
        session[seq] = response
        if len(session) > self.window:
            del session[min(session)]


@settings(max_examples=300)
@given(sessions_max=st.integers(1, 4), window=st.integers(1, 6),
       requests=st.lists(st.tuples(st.sampled_from("abcde"), st.integers(1, 30)), max_size=120))
def test_sessions_answer_and_keep_exactly_what_the_rules_say(
        sessions_max: int, window: int, requests: list[tuple[str, int]]) -> None:
    sessions, reference = Sessions(sessions_max, window), _Reference(sessions_max, window)
    for index, (client_id, seq) in enumerate(requests, start=1):
        got, expected = sessions.check(client_id, seq, index), reference.check(client_id, seq)
        if isinstance(expected, ErrorCode):
            assert got is not None and got.error is expected and got.index == index
        else:
            assert got == expected
        if expected is None:
            response = Response(index, version=seq)
            sessions.record(client_id, seq, response)
            reference.record(client_id, seq, response)
        exported = list(sessions.export())
        assert exported == [(c, sorted(s.items())) for c, s in reference.sessions.items()]
    restored = Sessions(sessions_max, window)
    for client_id, responses in sessions.export():
        restored.load(client_id, responses)
    assert list(restored.export()) == list(sessions.export())
