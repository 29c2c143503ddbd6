"""The Raft core of one node: elections, replication, snapshots, reads, membership.

How this works. ``RaftNode`` is a pure state machine in the style of etcd-io/raft.
Peers' messages enter through ``step``, time through ``tick(now)`` (counted in
ticks of ``tick_interval_s``), local requests through ``propose``,
``propose_conf_change``, ``read_index``, ``transfer_leadership`` and
``campaign``. Nothing leaves directly: ``ready()`` collects what to persist,
send and apply into one ``Ready``, and ``advance(ready)`` tells the core it was
done.

- Elections: a follower that hears no leader for a random ``[T, 2T)`` ticks
  first runs a pre-vote at ``term + 1`` (nobody changes term for it) and only
  if a quorum would vote runs the real election. With check-quorum, voters that
  heard from a leader within ``T`` ignore vote requests (leader stickiness) and a
  leader that has not heard from a quorum within ``T`` steps down.
- Replication: proposals are appended to the leader's log; appends are built
  lazily when the driver asks for a ``Ready``, so everything proposed meanwhile
  travels in few messages (``max_entries_per_append``/``max_bytes_per_append``),
  and up to ``max_inflight_appends`` of them are pipelined per follower
  (``progress``). A rejection carries a hint that skips a term per round trip.
  The leader counts itself in the commit quorum only for entries the driver
  reported persisted, and commits by counting only entries of its own term (a
  new leader appends an empty entry to get there).
- Snapshots: the driver snapshots and compacts its storage; a follower that needs
  compacted entries gets the snapshot in chunks (``snapshot_transfer``).
- Reads: ``read_index`` confirms leadership with a heartbeat round (``read_only``),
  or trusts check-quorum's lease when ``lease_read`` is set.
- Membership: one change at a time, applied when the driver has applied its
  entry (``advance``); learners are replicated to but never counted; a learner is
  promoted only once caught up; a leader that removed itself steps down.
- Leader transfer: the leader catches the target up, then sends ``timeout_now``,
  on which the target campaigns at once, bypassing stickiness.

Odd input from peers is counted (``counters``) and dropped, never raised. A bug
is an ``assert`` that shows the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from random import Random
from typing import Any

from pydantic import BaseModel

from consensus.core import Incoming
from consensus.raft.errors import CompactedError
from consensus.raft.log import RaftLog
from consensus.raft.messages import (
    APPEND,
    APPEND_RESP,
    HEARTBEAT,
    HEARTBEAT_RESP,
    MESSAGE_KINDS,
    PREVOTE,
    PREVOTE_RESP,
    PROPOSE,
    READ_INDEX,
    READ_INDEX_RESP,
    REQUEST_ID_BYTES_MAX,
    SNAPSHOT,
    SNAPSHOT_RESP,
    TIMEOUT_NOW,
    VOTE,
    VOTE_RESP,
    Append,
    AppendResp,
    Heartbeat,
    HeartbeatResp,
    PreVote,
    PreVoteResp,
    Propose,
    ReadIndex,
    ReadIndexResp,
    SnapshotChunk,
    SnapshotResp,
    TimeoutNow,
    Vote,
    VoteResp,
)
from consensus.raft.outbox import MESSAGE_OVERHEAD_BYTES, Outbox
from consensus.raft.progress import Inflights, Progress, ProgressState
from consensus.raft.quorum import VoteResult, committed_index, has_quorum, tally
from consensus.raft.read_only import ReadOnly
from consensus.raft.ready import Ready
from consensus.raft.settings import RaftSettings
from consensus.raft.snapshot_transfer import Receiving, Sending
from consensus.raft.storage import Storage
from consensus.raft.types import (
    ENTRY_OVERHEAD_BYTES,
    NODE_ID_BYTES_MAX,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    Role,
    Snapshot,
    SoftState,
)

__all__ = ["COUNTER_NAMES", "RaftNode"]

COUNTER_NAMES = (
    "messages_unexpected",
    "messages_from_self",
    "messages_stale_term",
    "messages_from_unknown",
    "messages_bogus",
    "votes_granted",
    "votes_refused",
    "votes_ignored_in_lease",
    "pre_votes_started",
    "elections_started",
    "elections_won",
    "campaigns_refused",
    "step_downs_check_quorum",
    "appends_rejected",
    "proposals_dropped_not_leader",
    "proposals_dropped_transfer",
    "proposals_dropped_uncommitted",
    "forwarded_proposals_dropped",
    "conf_changes_refused",
    "conf_changes_invalid",
    "reads_dropped",
    "snapshots_sent",
    "snapshots_installed",
    "snapshots_refused",
    "snapshot_chunks_out_of_order",
    "snapshot_resends",
    "snapshot_acks_stale",
    "transfers_started",
    "transfers_aborted",
    "transfers_refused",
)
"""Every counter ``RaftNode.counters`` reports (all start at 0)."""

# Snapshot chunks one follower may have unacknowledged: enough to fill a LAN link
# without holding many megabytes in the outbox.
_SNAPSHOT_WINDOW_CHUNKS = 4
# Payloads grouped into one outgoing envelope at most (one signature each).
_PAYLOADS_PER_ENVELOPE_MAX = 256
# Wire value -> EntryKind by indexing: the enum call is slow on the hot path.
_ENTRY_KINDS = tuple(EntryKind)
assert all(kind.value == position for position, kind in enumerate(_ENTRY_KINDS))


class RaftNode:
    """The Raft core of one node: a pure state machine (see module doc)."""

    def __init__(
        self,
        *,
        node_id: bytes,
        settings: RaftSettings,
        storage: Storage,
        rng: Random,
        now: float = 0.0,
        applied: int = 0,
    ) -> None:
        """Start (or restart) from what ``storage`` holds.

        ``applied`` is the last index the driver's state machine has applied; it
        must be at least the storage snapshot's index (the state machine was
        restored from that snapshot) and at most the commit index; 0 means "at the
        snapshot". Raises ``ValueError`` naming the value otherwise.
        """
        if not 1 <= len(node_id) <= NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id ({node_id.hex()}) must be 1 to {NODE_ID_BYTES_MAX} bytes")
        self._id = node_id
        self._settings = settings
        self._rng = rng
        self._log = RaftLog(storage)
        hard, conf = storage.initial_state()
        snapshot_index = storage.snapshot().index
        # Whatever storage holds is the truth after a crash: a commit index beyond
        # the log cannot be trusted and is recomputed from the cluster.
        commit = max(min(hard.commit, self._log.last_index()), snapshot_index)
        applied = applied or snapshot_index
        if not snapshot_index <= applied <= commit:
            raise ValueError(
                f"applied ({applied}) must be between the snapshot index ({snapshot_index}) "
                f"and the commit index ({commit})"
            )
        self._log.committed = commit
        self._log.applied = applied
        self._conf = conf
        for entry in self._log.entries(snapshot_index + 1, applied + 1, 1 << 62):
            if entry.kind is EntryKind.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                if change is not None:
                    self._conf = change.apply(self._conf)
        self._term = hard.term
        self._vote = hard.vote
        self._lead: bytes | None = None
        self._role = Role.FOLLOWER
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._outbox = Outbox(
            bytes_max=settings.max_bytes_per_append + MESSAGE_OVERHEAD_BYTES,
            payloads_max=_PAYLOADS_PER_ENVELOPE_MAX,
        )
        self._read_states: list[ReadState] = []
        self._receiving: Receiving | None = None
        self._prev_hard = hard
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._pending_ready: Ready | None = None
        self._epoch = now
        self._now = now
        self._ticks = 0
        # Leader and candidate state, set by _reset.
        self._progress: dict[bytes, Progress] = {}
        self._sending: dict[bytes, Sending] = {}
        self._votes: dict[bytes, bool] = {}
        self._read_only = self._new_read_only()
        self._reads_waiting_commit: list[tuple[bytes, bytes | None]] = []
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = settings.election_timeout_ticks
        self._lead_transferee: bytes | None = None
        self._pending_conf_index = 0
        self._uncommitted_bytes = 0
        self._become_follower(self._term, None)

    # -- views -------------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        """This node's id."""
        return self._id

    @property
    def settings(self) -> RaftSettings:
        """The settings this core runs with."""
        return self._settings

    @property
    def message_kinds(self) -> Mapping[str, type[BaseModel]]:
        """The ``raft.*`` kinds and their payload models."""
        return MESSAGE_KINDS

    @property
    def role(self) -> Role:
        """What this node is doing now."""
        return self._role

    @property
    def term(self) -> int:
        """The current term."""
        return self._term

    @property
    def leader_id(self) -> bytes | None:
        """The leader of the current term, if known."""
        return self._lead

    @property
    def commit_index(self) -> int:
        """The highest index known committed."""
        return self._log.committed

    @property
    def applied_index(self) -> int:
        """The highest index the driver has applied (as reported through ``advance``)."""
        return self._log.applied

    @property
    def first_index(self) -> int:
        """The first index held as an entry (the one after the latest snapshot or
        compaction point)."""
        return self._log.first_index()

    @property
    def last_index(self) -> int:
        """The last index of the log, persisted or not."""
        return self._log.last_index()

    @property
    def voters(self) -> tuple[bytes, ...]:
        """The voters of the configuration in force (as of the applied index), sorted."""
        return self._conf.voters

    @property
    def learners(self) -> tuple[bytes, ...]:
        """The learners of the configuration in force, sorted."""
        return self._conf.learners

    @property
    def conf_state(self) -> ConfState:
        """The configuration in force at the applied index: what the driver records
        with a snapshot it takes there (``create_snapshot``)."""
        return self._conf

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters (names in ``COUNTER_NAMES``)."""
        return dict(self._counters)

    def status(self) -> dict[str, Any]:
        """Role, term, leader, commit and applied index, voters: for status JSON.

        ``role`` is the ``Role`` value, except that a pre-candidate reports
        ``"candidate"``: status JSON knows leader, follower, candidate and learner.
        """
        role = Role.CANDIDATE if self._role is Role.PRE_CANDIDATE else self._role
        return {
            "role": role.value,
            "term": self._term,
            "leader_id": self._lead.hex() if self._lead is not None else None,
            "commit_index": self._log.committed,
            "applied_index": self._log.applied,
            "voters": [voter.hex() for voter in self._conf.voters],
        }

    def progress_status(self) -> dict[str, dict[str, Any]]:
        """On a leader, how far each member's log is known to match (for status JSON);
        empty elsewhere."""
        if self._role is not Role.LEADER:
            return {}
        return {
            peer.hex(): {
                "match": progress.match,
                "next": progress.next,
                "state": progress.state.name.lower(),
                "inflight": len(progress.inflights),
                "recent_active": progress.recent_active,
            }
            for peer, progress in self._progress.items()
        }

    def log_entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo <= index < hi`` of the log, persisted or not (for checkers).

        Raises ``CompactedError`` when ``lo`` was compacted away.
        """
        return self._log.entries(lo, min(hi, self._log.last_index() + 1), 1 << 62)

    # -- input -------------------------------------------------------------------

    def step(self, message: Incoming) -> None:
        """Handle one verified ``raft.*`` message; odd input is counted, never raised."""
        payload = message.payload
        model = MESSAGE_KINDS.get(message.kind)
        if model is None or type(payload) is not model:
            self._count("messages_unexpected")
            return
        if message.sender == self._id:
            self._count("messages_from_self")
            return
        self._step(message.sender, payload)

    def tick(self, now: float) -> None:
        """Advance time to ``now`` (monotonic seconds): run the ticks it completes.

        After a long stall only the last ``2 * election_timeout_ticks`` ticks are
        run: more would change nothing but the cost.
        """
        assert now >= self._now, (now, self._now)
        self._now = now
        # A hair of slack so that 0.3 / 0.1 counts as 3 ticks, not 2.999...
        target = int((now - self._epoch) / self._settings.tick_interval_s + 1e-9)
        catch_up_max = 2 * self._settings.election_timeout_ticks
        if target - self._ticks > catch_up_max:
            self._ticks = target - catch_up_max
        while self._ticks < target:
            self._ticks += 1
            if self._role is Role.LEADER:
                self._tick_leader()
            else:
                self._tick_election()

    def propose(self, data: bytes) -> int | None:
        """Append ``data`` to the log if this node leads; returns its index.

        Returns None (and counts why) when this node is not the leader (forward
        with ``forward_proposal`` or redirect to ``leader_id``), while a leader
        transfer is under way, or when ``max_uncommitted_bytes`` is reached. The
        index is not a promise: the entry is committed only if it is later applied
        at that index. Raises ``ValueError`` for data over ``max_bytes_per_append``.
        """
        self._check_proposal_size(data)
        return self._append_proposal(data, EntryKind.NORMAL)

    def forward_proposal(self, data: bytes) -> bool:
        """Send ``data`` to the known leader as a proposal; False if no leader is known
        (or this node leads: use ``propose``). Nothing reports the outcome: the
        application recognises its entry when it is applied."""
        self._check_proposal_size(data)
        if self._lead is None or self._lead == self._id:
            return False
        self._send(self._lead, PROPOSE, Propose(entries=(data,)), len(data))
        return True

    def propose_conf_change(self, change: ConfChange) -> int | None:
        """Propose one configuration change if this node leads; returns its index.

        Refused (None, counted as ``conf_changes_refused``) when not the leader,
        while an earlier change is not applied yet, when the change makes no sense
        for the current configuration (adding a member twice, removing an unknown
        node or the last voter), or when promoting a learner (or adding as voter a
        current learner) whose log is more than ``max_learner_lag_entries`` behind.
        """
        if self._role is not Role.LEADER or self._pending_conf_index > self._log.applied:
            self._count("conf_changes_refused")
            return None
        if not self._conf_change_allowed(change):
            self._count("conf_changes_refused")
            return None
        index = self._append_proposal(change.encode(), EntryKind.CONF_CHANGE)
        if index is not None:
            self._pending_conf_index = index
        return index

    def read_index(self, request_id: bytes) -> None:
        """Start a linearizable read; ``ReadState(request_id, index)`` comes out in a
        later ``Ready`` once it is safe to serve the read after applying ``index``.

        A non-leader forwards the request to the leader. A read that cannot be
        started (no leader known, too many pending) is dropped and counted as
        ``reads_dropped``: the caller's timeout answers it.
        """
        if len(request_id) > REQUEST_ID_BYTES_MAX:
            raise ValueError(
                f"request_id ({len(request_id)} bytes) exceeds {REQUEST_ID_BYTES_MAX} bytes"
            )
        if self._role is Role.LEADER:
            self._leader_read(request_id, None)
        elif self._lead is not None:
            self._send(self._lead, READ_INDEX, ReadIndex(request_id=request_id))
        else:
            self._count("reads_dropped")

    def transfer_leadership(self, to: bytes) -> None:
        """Hand leadership to voter ``to``: catch it up, then tell it to campaign.

        Only on the leader (elsewhere counted as ``transfers_refused``). Proposals
        are refused while the transfer runs; it is abandoned after an election
        timeout.
        """
        if self._role is not Role.LEADER or to not in self._conf.voters:
            self._count("transfers_refused")
            return
        if to == self._id or to == self._lead_transferee:
            return
        self._abort_transfer()
        self._lead_transferee = to
        self._election_elapsed = 0  # the transfer gets one election timeout
        self._count("transfers_started")
        progress = self._progress[to]
        if progress.match == self._log.last_index():
            self._send(to, TIMEOUT_NOW, TimeoutNow(term=self._term))

    def campaign(self) -> None:
        """Start an election now (with a pre-vote if configured): tests, bootstrap."""
        self._hup(transfer=False)

    # -- output ------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether ``ready()`` has anything; False while a Ready awaits ``advance``."""
        if self._pending_ready is not None:
            return False
        self._flush()
        log = self._log
        return bool(
            self._outbox
            or self._read_states
            or log.unstable
            or log.unstable_snapshot is not None
            or self._hard_state() != self._prev_hard
            or SoftState(self._lead, self._role) != self._prev_soft
            or log.committed > log.applied
        )

    def ready(self) -> Ready:
        """Everything to persist, send and apply now (see ``Ready`` for the order).

        Call ``advance(ready)`` before the next ``ready()``.
        """
        assert self._pending_ready is None, "advance() the previous Ready first"
        self._flush()
        log = self._log
        hard = self._hard_state()
        soft = SoftState(self._lead, self._role)
        ready = Ready(
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(log.unstable),
            snapshot=log.unstable_snapshot,
            messages=self._outbox.take(),
            committed_entries=tuple(
                log.committed_to_apply(self._settings.max_apply_bytes_per_ready)
            ),
            read_states=tuple(self._read_states),
            soft_state=soft if soft != self._prev_soft else None,
        )
        self._read_states = []
        self._prev_hard = hard
        self._prev_soft = soft
        self._pending_ready = ready
        return ready

    def advance(self, ready: Ready) -> None:
        """The driver persisted, sent and applied what ``ready`` held."""
        assert ready is self._pending_ready, "advance() takes the last Ready, once"
        self._pending_ready = None
        log = self._log
        if ready.snapshot is not None:
            log.stable_snapshot_to(ready.snapshot.index)
            if log.applied < ready.snapshot.index:
                log.applied_to(ready.snapshot.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            self._apply_entries(ready.committed_entries)
        if self._role is Role.LEADER and log.unstable_snapshot is None:
            me = self._progress.get(self._id)
            if me is not None and me.maybe_update(log.persisted_index()):
                self._maybe_commit()

    def check_invariants(self) -> None:
        """Assert the core's internal consistency (for tests and the simulator)."""
        log = self._log
        assert 0 <= log.applied <= log.committed <= log.last_index(), self.status()
        assert self._vote is None or self._term > 0, (self._term, self._vote)
        if self._role is Role.LEADER:
            assert self._lead == self._id, (self._lead, self._id)
            assert self._vote == self._id, (self._vote, self._id)
            assert set(self._progress) == set(self._conf.voters) | set(self._conf.learners), (
                sorted(self._progress),
                self._conf,
            )
            for peer, progress in self._progress.items():
                assert progress.match <= log.last_index(), (peer.hex(), progress)
                assert progress.next <= log.last_index() + 1, (peer.hex(), progress)
        else:
            assert not self._progress, self._role
        if self._role is Role.CANDIDATE:
            assert self._vote == self._id, (self._vote, self._id)

    # -- stepping ----------------------------------------------------------------

    def _step(self, sender: bytes, m: BaseModel) -> None:
        if isinstance(m, Propose):
            self._on_propose(sender, m)
            return
        if isinstance(m, ReadIndex):
            self._on_read_request(sender, m)
            return
        term: int = getattr(m, "term")  # noqa: B009 - every other kind carries a term
        if term > self._term:
            if isinstance(m, Vote | PreVote) and not m.transfer and self._in_lease():
                # Leader stickiness: a leader was heard from lately, so this
                # candidate is likely cut off or disruptive; do not even answer.
                self._count("votes_ignored_in_lease")
                return
            if isinstance(m, PreVote) or (isinstance(m, PreVoteResp) and m.granted):
                pass  # pre-votes change nobody's term
            elif isinstance(m, Append | Heartbeat | SnapshotChunk):
                self._become_follower(term, sender)
            else:
                self._become_follower(term, None)
        elif term < self._term:
            self._on_stale(sender, m)
            return
        if isinstance(m, Vote | PreVote):
            self._on_vote_request(sender, m)
        elif self._role is Role.LEADER:
            self._step_leader(sender, m)
        elif self._role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(sender, m)
        else:
            self._step_follower(sender, m)

    def _on_stale(self, sender: bytes, m: BaseModel) -> None:
        self._count("messages_stale_term")
        if isinstance(m, Append | Heartbeat | SnapshotChunk):
            # A deposed leader (or one cut off) learns the new term from the answer
            # and steps down; without it, it would keep disrupting with appends.
            self._send(sender, HEARTBEAT_RESP, HeartbeatResp(term=self._term))
        elif isinstance(m, PreVote):
            # Tells a pre-candidate with an old term that it is behind.
            self._send(sender, PREVOTE_RESP, PreVoteResp(term=self._term, granted=False))

    def _in_lease(self) -> bool:
        return (
            self._settings.check_quorum
            and self._lead is not None
            and self._election_elapsed < self._settings.election_timeout_ticks
        )

    def _on_vote_request(self, sender: bytes, m: Vote | PreVote) -> None:
        pre = isinstance(m, PreVote)
        can_vote = (
            self._vote == sender
            or (self._vote is None and self._lead is None)
            or (pre and m.term > self._term)
        )
        granted = can_vote and self._log.is_up_to_date(m.last_index, m.last_term)
        self._count("votes_granted" if granted else "votes_refused")
        if granted and not pre:
            self._vote = sender
            self._election_elapsed = 0
        term = m.term if granted else self._term
        if pre:
            self._send(sender, PREVOTE_RESP, PreVoteResp(term=term, granted=granted))
        else:
            self._send(sender, VOTE_RESP, VoteResp(term=term, granted=granted))

    def _step_follower(self, sender: bytes, m: BaseModel) -> None:
        if isinstance(m, Append | Heartbeat | SnapshotChunk):
            self._election_elapsed = 0
            self._lead = sender
            if isinstance(m, Append):
                self._on_append(sender, m)
            elif isinstance(m, Heartbeat):
                self._log.commit_to(min(m.commit, self._log.last_index()))
                self._send(
                    sender, HEARTBEAT_RESP, HeartbeatResp(term=self._term, read_seq=m.read_seq)
                )
            else:
                self._on_snapshot_chunk(sender, m)
        elif isinstance(m, TimeoutNow):
            if self._id in self._conf.voters:
                self._hup(transfer=True)
            else:
                self._count("campaigns_refused")
        elif isinstance(m, ReadIndexResp):
            self._read_states.append(ReadState(m.request_id, m.index))
        elif not isinstance(m, VoteResp | PreVoteResp):  # late answers are normal
            self._count("messages_unexpected")

    def _step_candidate(self, sender: bytes, m: BaseModel) -> None:
        if isinstance(m, Append | Heartbeat | SnapshotChunk):
            # A leader of our term exists: it won, we did not.
            self._become_follower(self._term, sender)
            self._step_follower(sender, m)
            return
        if isinstance(m, VoteResp) and self._role is Role.CANDIDATE:
            self._record_vote(sender, m.granted)
        elif isinstance(m, PreVoteResp) and self._role is Role.PRE_CANDIDATE:
            self._record_vote(sender, m.granted)
        elif not isinstance(m, VoteResp | PreVoteResp):
            self._count("messages_unexpected")

    def _record_vote(self, sender: bytes, granted: bool) -> None:
        self._votes.setdefault(sender, granted)
        result = tally(self._conf.voters, self._votes)
        if result is VoteResult.WON:
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self._term, None)

    def _step_leader(self, sender: bytes, m: BaseModel) -> None:
        progress = self._progress.get(sender)
        if progress is None:
            self._count("messages_from_unknown")
            return
        progress.recent_active = True
        if isinstance(m, AppendResp):
            self._on_append_resp(sender, progress, m)
        elif isinstance(m, HeartbeatResp):
            self._on_heartbeat_resp(sender, progress, m)
        elif isinstance(m, SnapshotResp):
            self._on_snapshot_resp(sender, progress, m)
        elif not isinstance(m, VoteResp | PreVoteResp):
            self._count("messages_unexpected")

    # -- follower side of replication ---------------------------------------------

    def _on_append(self, sender: bytes, m: Append) -> None:
        log = self._log
        committed = log.committed
        last_new = m.prev_index + len(m.entries)
        if last_new <= committed:
            # Old news (a duplicate or a resend): say how far we are.
            self._send(sender, APPEND_RESP, AppendResp(term=self._term, index=committed))
            return
        # Below our commit index the logs agree (the leader holds every committed
        # entry), so only a ``prev_index`` above it needs checking.
        if m.prev_index > committed and not log.match_term(m.prev_index, m.prev_term):
            self._reject_append(sender, m)
            return
        skip = max(0, committed - m.prev_index)  # entries we hold committed already
        first = m.prev_index + 1 + skip
        kinds = _ENTRY_KINDS
        entries = [
            Entry(term, first + position, kinds[kind], data)
            for position, (term, kind, data) in enumerate(m.entries[skip:])
        ]
        conflict = log.find_conflict(entries)
        if conflict:
            assert conflict > committed, (conflict, committed)
            log.append(entries[conflict - first :])
        # Entries past ``last_new`` may be stale: commit only what this append vouches for.
        log.commit_to(min(m.commit, last_new))
        self._send(sender, APPEND_RESP, AppendResp(term=self._term, index=last_new))

    def _reject_append(self, sender: bytes, m: Append) -> None:
        # The hint: the last index whose term is at most the leader's ``prev_term``
        # (with that term), so that the leader can skip a whole term per round trip.
        log = self._log
        hint_index, hint_term = log.find_conflict_by_term(
            min(m.prev_index, log.last_index()), m.prev_term
        )
        self._count("appends_rejected")
        resp = AppendResp(
            term=self._term,
            index=m.prev_index,
            reject=True,
            hint_index=hint_index,
            hint_term=hint_term,
        )
        self._send(sender, APPEND_RESP, resp)

    def _on_snapshot_chunk(self, sender: bytes, m: SnapshotChunk) -> None:
        log = self._log
        if m.index <= log.committed:
            self._receiving = None
            self._send(sender, APPEND_RESP, AppendResp(term=self._term, index=log.committed))
            return
        receiving = self._receiving
        key = (sender, self._term, m.index, m.snap_term)
        if receiving is None or key != (
            receiving.source,
            receiving.source_term,
            receiving.index,
            receiving.term,
        ):
            if m.offset != 0:
                self._count("snapshot_chunks_out_of_order")
                self._send(
                    sender, SNAPSHOT_RESP, SnapshotResp(term=self._term, index=m.index, offset=0)
                )
                return
            if m.total_bytes > self._settings.max_snapshot_bytes:
                self._count("snapshots_refused")
                return
            conf = ConfState.of(m.voters, m.learners)
            receiving = Receiving(
                sender, self._term, m.index, m.snap_term, conf, m.total_bytes, bytearray()
            )
            self._receiving = receiving
        if not receiving.accept(m.offset, m.data):
            self._count("snapshot_chunks_out_of_order")
        elif m.done:
            self._receiving = None
            if not receiving.complete:
                self._count("messages_bogus")
                return
            installed = self._restore(receiving.snapshot())
            index = log.last_index() if installed else log.committed
            self._send(sender, APPEND_RESP, AppendResp(term=self._term, index=index))
            return
        resp = SnapshotResp(term=self._term, index=m.index, offset=len(receiving.data))
        self._send(sender, SNAPSHOT_RESP, resp)

    def _restore(self, snapshot: Snapshot) -> bool:
        """Install a snapshot from the leader; False if the log already covers it."""
        log = self._log
        if snapshot.index <= log.committed:
            return False
        if log.match_term(snapshot.index, snapshot.term):
            log.commit_to(snapshot.index)  # the log already has it: fast-forward
            return False
        log.restore(snapshot)
        self._set_conf(snapshot.conf)
        self._count("snapshots_installed")
        return True

    # -- leader side of replication -------------------------------------------------

    def _on_append_resp(self, sender: bytes, progress: Progress, m: AppendResp) -> None:
        log = self._log
        if m.index > log.last_index():
            self._count("messages_bogus")
            return
        if m.reject:
            hint = m.hint_index
            if m.hint_term > 0:
                hint, _ = log.find_conflict_by_term(min(hint, log.last_index()), m.hint_term)
            if progress.maybe_decrease_to(m.index, hint):
                if progress.state is ProgressState.REPLICATE:
                    progress.become_probe()
            return
        updated = progress.maybe_update(m.index)
        if progress.state is ProgressState.SNAPSHOT:
            # Done once the peer holds the snapshot, or can go on from our log. (If we
            # compacted past the snapshot meanwhile, probing leads to a newer one.)
            can_append = progress.match + 1 >= log.first_index()
            if can_append or progress.match >= progress.pending_snapshot:
                self._sending.pop(sender, None)
                progress.become_probe()
                if can_append:
                    progress.become_replicate()
        elif not updated:
            return
        elif progress.state is ProgressState.PROBE:
            progress.become_replicate()
        else:
            progress.inflights.free_to(m.index)
        if not updated:
            return
        self._maybe_commit()
        if sender == self._lead_transferee and progress.match == log.last_index():
            self._send(sender, TIMEOUT_NOW, TimeoutNow(term=self._term))

    def _on_heartbeat_resp(self, sender: bytes, progress: Progress, m: HeartbeatResp) -> None:
        progress.probe_sent = False
        if progress.state is ProgressState.REPLICATE and progress.inflights.full:
            progress.inflights.free_first()
        if progress.match < self._log.last_index() and not progress.paused:
            # Possibly lost appends: send one (even empty) so a gap gets noticed.
            self._send_append(sender, progress, send_if_empty=True)
        if sender in self._conf.voters:
            self._read_only.ack(sender, m.read_seq)
            for read in self._read_only.release(self._conf.voters, self._id):
                self._serve_read(read.request_id, read.origin, read.index)

    def _on_snapshot_resp(self, sender: bytes, progress: Progress, m: SnapshotResp) -> None:
        sending = self._sending.get(sender)
        if (
            progress.state is not ProgressState.SNAPSHOT
            or sending is None
            or m.index != sending.snapshot.index
        ):
            self._count("snapshot_acks_stale")
            return
        progress.snapshot_idle_ticks = 0
        sending.on_ack(m.offset)
        self._pump_snapshot(sender, sending)

    def _maybe_commit(self) -> None:
        match = {peer: progress.match for peer, progress in self._progress.items()}
        index = committed_index(self._conf.voters, match)
        had_committed_in_term = self._committed_in_term()
        if self._log.maybe_commit(index, self._term) and not had_committed_in_term:
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for request_id, origin in waiting:
                self._leader_read(request_id, origin)

    def _flush(self) -> None:
        """Build the appends (and read heartbeats) that pending changes call for.

        Done lazily, when the driver asks for output, so that proposals made
        between two Readies share appends instead of costing one message each.
        """
        if self._role is not Role.LEADER:
            return
        for peer, progress in self._progress.items():
            if peer != self._id:
                self._replicate_to(peer, progress)
        if self._read_only.needs_broadcast:
            self._broadcast_heartbeat()

    def _replicate_to(self, peer: bytes, progress: Progress) -> None:
        if progress.state is ProgressState.SNAPSHOT:
            return
        commit_news = (
            self._settings.announce_commit_at_once and progress.sent_commit < self._log.committed
        )
        last = self._log.last_index()
        while not progress.paused and (progress.next <= last or commit_news):
            if not self._send_append(peer, progress, send_if_empty=commit_news):
                return
            commit_news = False
            if progress.state is not ProgressState.REPLICATE:
                return

    def _send_append(self, peer: bytes, progress: Progress, *, send_if_empty: bool) -> bool:
        """Send the next append to ``peer``; False if nothing was sent (nothing to
        send, or a snapshot transfer started instead)."""
        log = self._log
        prev_index = progress.next - 1
        prev_term = log.term(prev_index)
        if prev_term is None:
            self._start_snapshot(peer, progress)
            return False
        last = log.last_index()
        entries: list[Entry] = []
        if progress.next <= last:
            hi = min(last, prev_index + self._settings.max_entries_per_append) + 1
            try:
                entries = log.entries(progress.next, hi, self._settings.max_bytes_per_append)
            except CompactedError:
                self._start_snapshot(peer, progress)
                return False
        if not entries and not send_if_empty:
            return False
        wire = tuple((entry.term, int(entry.kind), entry.data) for entry in entries)
        # Built from our own log, so validation is skipped on this hot path; the
        # receiving side validates (the envelope layer), as do the tests in transit.
        append = Append.model_construct(
            term=self._term,
            prev_index=prev_index,
            prev_term=prev_term,
            entries=wire,
            commit=log.committed,
        )
        self._send(peer, APPEND, append, sum(len(entry.data) for entry in entries))
        progress.sent_commit = max(progress.sent_commit, log.committed)
        if entries:
            progress.sent_entries(entries[-1].index)
        elif progress.state is ProgressState.PROBE:
            progress.probe_sent = True
        return True

    def _start_snapshot(self, peer: bytes, progress: Progress) -> None:
        if not progress.recent_active:
            return  # do not ship a snapshot to a peer that may well be down
        snapshot = self._log.snapshot()
        assert snapshot.index > 0, (snapshot, self._log.first_index())
        progress.become_snapshot(snapshot.index)
        sending = Sending(snapshot, self._settings.snapshot_chunk_bytes, _SNAPSHOT_WINDOW_CHUNKS)
        self._sending[peer] = sending
        self._count("snapshots_sent")
        self._pump_snapshot(peer, sending)

    def _pump_snapshot(self, peer: bytes, sending: Sending) -> None:
        snapshot = sending.snapshot
        for offset, data, done in sending.next_chunks():
            chunk = SnapshotChunk(
                term=self._term,
                index=snapshot.index,
                snap_term=snapshot.term,
                voters=snapshot.conf.voters,
                learners=snapshot.conf.learners,
                total_bytes=len(snapshot.data),
                offset=offset,
                data=data,
                done=done,
            )
            self._send(peer, SNAPSHOT, chunk, len(data))

    def _broadcast_heartbeat(self) -> None:
        seq = self._read_only.broadcast(self._ticks)
        for peer, progress in self._progress.items():
            if peer != self._id:
                commit = min(progress.match, self._log.committed)
                self._send(peer, HEARTBEAT, Heartbeat(term=self._term, commit=commit, read_seq=seq))

    # -- proposals, reads, configuration -------------------------------------------

    def _check_proposal_size(self, data: bytes) -> None:
        if len(data) > self._settings.max_bytes_per_append:
            raise ValueError(
                f"proposal of {len(data)} bytes exceeds max_bytes_per_append "
                f"({self._settings.max_bytes_per_append})"
            )

    def _append_proposal(self, data: bytes, kind: EntryKind) -> int | None:
        if self._role is not Role.LEADER:
            self._count("proposals_dropped_not_leader")
            return None
        if self._lead_transferee is not None:
            self._count("proposals_dropped_transfer")
            return None
        size = len(data) + ENTRY_OVERHEAD_BYTES
        if (
            self._uncommitted_bytes > 0
            and self._uncommitted_bytes + size > self._settings.max_uncommitted_bytes
        ):
            self._count("proposals_dropped_uncommitted")
            return None
        index = self._log.append([Entry(self._term, self._log.last_index() + 1, kind, data)])
        self._uncommitted_bytes += size
        return index

    def _on_propose(self, sender: bytes, m: Propose) -> None:
        if self._role is not Role.LEADER:
            # One hop only: a stale forwarder must not start a forwarding loop.
            self._counters["forwarded_proposals_dropped"] += len(m.entries)
            return
        for data in m.entries:
            too_big = len(data) > self._settings.max_bytes_per_append
            if too_big or self._append_proposal(data, EntryKind.NORMAL) is None:
                self._count("forwarded_proposals_dropped")

    def _on_read_request(self, sender: bytes, m: ReadIndex) -> None:
        if self._role is not Role.LEADER:
            self._count("reads_dropped")
            return
        self._leader_read(m.request_id, sender)

    def _committed_in_term(self) -> bool:
        return self._log.term(self._log.committed) == self._term

    def _leader_read(self, request_id: bytes, origin: bytes | None) -> None:
        if not self._committed_in_term():
            # Until an entry of this term commits, our commit index may be behind
            # the cluster's: hold the read back (see read_only).
            if len(self._reads_waiting_commit) >= self._settings.max_pending_reads:
                self._count("reads_dropped")
            else:
                self._reads_waiting_commit.append((request_id, origin))
            return
        index = self._log.committed
        if self._conf.voters == (self._id,) or self._in_read_lease():
            self._serve_read(request_id, origin, index)
        elif not self._read_only.add(request_id, origin, index):
            self._count("reads_dropped")

    def _in_read_lease(self) -> bool:
        """Whether ``lease_read`` is on and a quorum's echoes still vouch that no other
        leader exists (see read_only); if not, the read takes a heartbeat round."""
        if not self._settings.lease_read:
            return False
        timeout = self._settings.election_timeout_ticks
        return self._ticks < self._read_only.lease_expiry(self._conf.voters, self._id, timeout)

    def _serve_read(self, request_id: bytes, origin: bytes | None, index: int) -> None:
        if origin is None:
            self._read_states.append(ReadState(request_id, index))
        else:
            resp = ReadIndexResp(term=self._term, request_id=request_id, index=index)
            self._send(origin, READ_INDEX_RESP, resp)
            progress = self._progress.get(origin)
            if (
                progress is not None
                and progress.sent_commit < index
                and progress.state is not ProgressState.SNAPSHOT
                and not progress.paused
            ):
                # The reader applies up to ``index`` before answering: tell it the
                # commit now rather than at the next heartbeat.
                self._send_append(origin, progress, send_if_empty=True)

    def _conf_change_allowed(self, change: ConfChange) -> bool:
        node, voters, learners = change.node_id, self._conf.voters, self._conf.learners
        kind = change.kind
        if kind is ConfChangeKind.ADD_LEARNER:
            return node not in voters and node not in learners
        if kind is ConfChangeKind.REMOVE_NODE:
            return node in learners or (node in voters and len(voters) > 1)
        if kind is ConfChangeKind.ADD_VOTER and node not in learners:
            return node not in voters
        # Promotion (explicit, or adding a learner as voter): only once caught up.
        progress = self._progress.get(node)
        return (
            node in learners
            and progress is not None
            and progress.match + self._settings.max_learner_lag_entries >= self._log.last_index()
        )

    def _apply_entries(self, entries: tuple[Entry, ...]) -> None:
        """The driver applied ``entries``: free the uncommitted budget, apply changes."""
        log = self._log
        if entries[-1].index <= log.applied:
            return  # covered by a snapshot installed meanwhile
        if self._role is Role.LEADER:
            term = self._term
            size = sum(len(e.data) + ENTRY_OVERHEAD_BYTES for e in entries if e.term == term)
            self._uncommitted_bytes = max(0, self._uncommitted_bytes - size)
        conf_change = EntryKind.CONF_CHANGE
        for entry in entries:
            if entry.kind is conf_change and entry.index > log.applied:
                change = ConfChange.decode(entry.data)
                if change is None:
                    self._count("conf_changes_invalid")
                else:
                    self._set_conf(change.apply(self._conf))
        log.applied_to(entries[-1].index)

    def _set_conf(self, conf: ConfState) -> None:
        self._conf = conf
        if self._role is not Role.LEADER:
            if self._role in (Role.FOLLOWER, Role.LEARNER):
                self._role = self._follower_role()
            return
        if self._id not in conf.voters:
            self._become_follower(self._term, None)  # removed itself: step down
            return
        members = sorted({*conf.voters, *conf.learners})  # sorted: deterministic order
        for peer in list(self._progress):
            if peer not in members:
                del self._progress[peer]
                self._sending.pop(peer, None)
        for peer in members:
            progress = self._progress.get(peer)
            if progress is None:
                progress = self._new_progress(0)
                self._progress[peer] = progress
            progress.is_learner = peer in conf.learners
        if self._lead_transferee is not None and self._lead_transferee not in conf.voters:
            self._abort_transfer()
        self._maybe_commit()  # the quorum changed

    def _has_unapplied_conf_changes(self) -> bool:
        log = self._log
        lo = log.applied + 1
        if log.unstable_snapshot is not None:
            lo = max(lo, log.unstable_snapshot.index + 1)
        if lo > log.committed:
            return False
        entries = log.entries(lo, log.committed + 1, 1 << 62)
        return any(entry.kind is EntryKind.CONF_CHANGE for entry in entries)

    def _abort_transfer(self) -> None:
        if self._lead_transferee is not None:
            self._lead_transferee = None
            self._count("transfers_aborted")

    # -- time ----------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._id in self._conf.voters and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_leader(self) -> None:
        settings = self._settings
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= settings.election_timeout_ticks:
            self._election_elapsed = 0
            if settings.check_quorum:
                active = [
                    p for p, pr in self._progress.items() if pr.recent_active or p == self._id
                ]
                if not has_quorum(self._conf.voters, active):
                    self._count("step_downs_check_quorum")
                    self._become_follower(self._term, None)
                    return
                for peer, progress in self._progress.items():
                    progress.recent_active = peer == self._id
            if self._lead_transferee is not None:
                self._abort_transfer()  # the target did not win within a timeout
        if self._heartbeat_elapsed >= settings.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        resend_after = max(1, settings.election_timeout_ticks // 2)
        for peer, sending in self._sending.items():
            progress = self._progress[peer]
            progress.snapshot_idle_ticks += 1
            if progress.snapshot_idle_ticks >= resend_after:
                progress.snapshot_idle_ticks = 0
                sending.rewind()
                self._count("snapshot_resends")
                self._pump_snapshot(peer, sending)

    # -- roles ---------------------------------------------------------------------

    def _hup(self, *, transfer: bool) -> None:
        if self._role is Role.LEADER:
            return
        if self._id not in self._conf.voters or self._has_unapplied_conf_changes():
            # A node that may not be a voter once those changes apply must not run.
            self._count("campaigns_refused")
            return
        if self._settings.pre_vote and not transfer:
            self._become_pre_candidate()
            self._count("pre_votes_started")
            self._solicit_votes(self._term + 1, transfer=False)
        else:
            self._campaign(transfer=transfer)

    def _campaign(self, *, transfer: bool) -> None:
        self._become_candidate()
        self._count("elections_started")
        self._solicit_votes(self._term, transfer=transfer)

    def _solicit_votes(self, term: int, *, transfer: bool) -> None:
        self._votes[self._id] = True
        if tally(self._conf.voters, self._votes) is VoteResult.WON:
            self._record_vote(self._id, True)  # a single voter wins at once
            return
        last_index, last_term = self._log.last_index(), self._log.last_term()
        pre = self._role is Role.PRE_CANDIDATE
        for voter in self._conf.voters:
            if voter == self._id:
                continue
            if pre:
                request = PreVote(term=term, last_index=last_index, last_term=last_term)
                self._send(voter, PREVOTE, request)
            else:
                vote = Vote(
                    term=term, last_index=last_index, last_term=last_term, transfer=transfer
                )
                self._send(voter, VOTE, vote)

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = None
        self._lead = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        timeout = self._settings.election_timeout_ticks
        self._randomized_timeout = timeout + self._rng.randrange(timeout)
        self._abort_transfer()
        self._votes = {}
        self._progress = {}
        self._sending = {}
        dropped = len(self._read_only) + len(self._reads_waiting_commit)
        self._counters["reads_dropped"] += dropped
        self._read_only = self._new_read_only()
        self._reads_waiting_commit = []
        self._uncommitted_bytes = 0
        self._pending_conf_index = 0

    def _follower_role(self) -> Role:
        return Role.LEARNER if self._id in self._conf.learners else Role.FOLLOWER

    def _become_follower(self, term: int, lead: bytes | None) -> None:
        self._reset(term)
        self._lead = lead
        self._role = self._follower_role()

    def _become_pre_candidate(self) -> None:
        # Neither term nor vote change: a pre-vote is only a question.
        self._reset(self._term)
        self._role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE

    def _become_leader(self) -> None:
        assert self._role is Role.CANDIDATE, self._role
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        self._count("elections_won")
        last = self._log.last_index()
        for peer in sorted({*self._conf.voters, *self._conf.learners}):
            progress = self._new_progress(last)
            progress.is_learner = peer in self._conf.learners
            self._progress[peer] = progress
        me = self._progress[self._id]
        me.match = self._log.persisted_index() if self._log.unstable_snapshot is None else 0
        me.become_replicate()
        me.recent_active = True
        # The empty entry of this term lets the leader commit (and learn the commit
        # index) by counting; configuration changes wait until it is applied.
        self._log.append([Entry(self._term, last + 1)])
        self._pending_conf_index = last + 1

    def _new_read_only(self) -> ReadOnly:
        settings = self._settings
        # Enough rounds to cover an election timeout of heartbeats, and then some.
        rounds = 2 * settings.election_timeout_ticks // settings.heartbeat_interval_ticks + 4
        return ReadOnly(settings.max_pending_reads, rounds)

    def _new_progress(self, last: int) -> Progress:
        return Progress(
            match=0, next=last + 1, inflights=Inflights(self._settings.max_inflight_appends)
        )

    # -- plumbing ------------------------------------------------------------------

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._log.committed)

    def _count(self, name: str) -> None:
        self._counters[name] += 1

    def _send(self, to: bytes, kind: str, payload: BaseModel, data_bytes: int = 0) -> None:
        self._outbox.send(to, kind, payload, data_bytes)
