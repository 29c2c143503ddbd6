"""Node configuration: pydantic models, loaded from ``node.toml`` in the node's directory.

Every limit the node enforces is a field here with its unit in its name and a
default; ``agentmesh config defaults`` prints them all as commented TOML, and
docs/CONFIG.md is that output. Unknown keys are errors, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consensus.gossip.settings import GossipSettings
from consensus.kvstore import KVSettings
from consensus.raft import RaftSettings
from mesh.errors import ConfigError
from mesh.membership.settings import MembershipSettings

__all__ = [
    "CONFIG_FILE_NAME",
    "EnvelopeConfig",
    "GossipConfig",
    "MembershipConfig",
    "NodeConfig",
    "RaftConfig",
    "TransportConfig",
    "check_tcp_address",
    "defaults_toml",
    "load_config",
    "parse_config",
]

CONFIG_FILE_NAME = "node.toml"
_MIB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvelopeConfig(_Section):
    """Limits checked on every received envelope, in the order they are applied."""

    envelope_size_bytes_max: int = Field(
        1 * _MIB,
        ge=1024,
        description="Largest envelope accepted, in bytes; larger frames are rejected as "
        "'too_large' before any decoding. Raise it for big batches, at the cost of memory "
        "per message in flight.",
    )
    batch_entries_max: int = Field(
        4096,
        ge=1,
        description="Most payloads one envelope may carry; more is 'malformed'.",
    )
    verify_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads that check the signatures of one received batch in parallel "
        "(Ed25519 verification releases the GIL). 1 verifies on the event loop alone, "
        "best when several nodes share the machine's cores (a local mesh): handing a "
        "share to a thread then costs more than it saves. 2 or more pay when a node has "
        "cores to itself; more than the machine's cores gains nothing.",
    )
    link_macs: bool = Field(
        True,
        description="Authenticate an envelope to one node whose certificate this node holds "
        "with a link MAC (keyed BLAKE2b under a key only the two nodes can derive from their "
        "certified keys) instead of an Ed25519 signature: about 2 us against 40 to sign and "
        "100 to verify, on every hop. Such an envelope proves its origin to its recipient "
        "alone, not to a third party, and a node whose private key leaked can be sent "
        "forged envelopes in any certified node's name (docs/DECISIONS.md). False signs "
        "everything. Receiving both kinds is always on; a node of an earlier version "
        "refuses link MACs, so keep this false until every node runs this version.",
    )
    replay_window_messages: int = Field(
        4096,
        ge=64,
        description="Per sender, how many of the latest accepted sequence numbers are "
        "remembered: one of them, or one below any number forgotten, is a 'replay'. An "
        "envelope may arrive after this many later ones and still be accepted. Wider "
        "tolerates more reordering and costs about 60 bytes per number per sender.",
    )
    trusted_senders_max: int = Field(
        4_096,
        ge=1,
        description="Certified senders remembered at once (with their replay windows); the "
        "least recently heard is forgotten first and must present its certificate again.",
    )
    clock_skew_max_ms: int = Field(
        5_000,
        ge=0,
        description="How far ahead of the local clock a sender's timestamp may be, in "
        "milliseconds; further is 'clock_skew'. Keep node clocks in sync (NTP) well within it.",
    )
    message_age_max_ms: int = Field(
        120_000,
        ge=1_000,
        description="How far behind the local clock a timestamp may be, in milliseconds; "
        "older is 'clock_skew'. Bounds how long a captured envelope could be replayed to "
        "a node that restarted and forgot its replay windows.",
    )


class TransportConfig(_Section):
    """ZeroMQ socket settings (queues, frame limits, reconnection) and the TCP lanes beside them."""

    send_queue_messages_max: int = Field(
        10_000,
        ge=1,
        description="Envelopes queued per outbound peer connection (ZeroMQ SNDHWM); when "
        "full, a send waits up to send_timeout_ms and is then dropped and counted.",
    )
    receive_queue_messages_max: int = Field(
        10_000,
        ge=1,
        description="Frames queued on the listening socket before ZeroMQ pushes back on "
        "senders (RCVHWM).",
    )
    receive_batch_frames_max: int = Field(
        512,
        ge=1,
        description="Frames drained from a socket per wake-up before yielding to other tasks; "
        "larger is faster under load, smaller keeps timers punctual.",
    )
    frame_size_bytes_hard_max: int = Field(
        64 * _MIB,
        ge=1024,
        description="ZeroMQ's own frame limit (MAXMSGSIZE): a peer sending a larger frame is "
        "disconnected by ZeroMQ before the node sees it (a lane is closed). Frames between "
        "envelope_size_bytes_max and this are received and counted as 'too_large'.",
    )
    send_timeout_ms: int = Field(
        1_000,
        ge=0,
        description="How long an awaited send waits for room in a full queue before the "
        "envelope is dropped and counted.",
    )
    reconnect_interval_ms: int = Field(
        100,
        ge=1,
        description="First delay before ZeroMQ reconnects a lost connection (and before a "
        "broken lane is asked for again).",
    )
    reconnect_interval_max_ms: int = Field(
        5_000,
        ge=1,
        description="Longest delay between reconnect attempts (exponential back-off up to it).",
    )
    connections_max: int = Field(
        1_024,
        ge=1,
        description="Outbound connections (one per peer address) kept open at once; beyond "
        "it the least recently used connection is closed.",
    )
    lanes: bool = Field(
        True,
        description="Carry frames to a peer over a direct TCP lane beside its ZeroMQ "
        "connection once both ends agree (mesh/lane.py): one thread wake-up per hop instead "
        "of three. Off: everything goes through ZeroMQ.",
    )
    lane_write_buffer_bytes_max: int = Field(
        16 * _MIB,
        ge=64 * 1024,
        description="Bytes waiting to be written on one lane beyond which sends to it stop: "
        "an awaited send waits up to send_timeout_ms, others are dropped and counted.",
    )
    lane_held_bytes_max: int = Field(
        16 * _MIB,
        ge=64 * 1024,
        description="Bytes of frames a listener holds on a new lane until the sender's "
        "barrier arrives through ZeroMQ; a lane that sends more first is closed.",
    )
    lane_connect_timeout_ms: int = Field(
        1_000, ge=1, description="How long opening a lane's TCP connection may take."
    )
    lane_answer_timeout_ms: int = Field(
        2_000,
        ge=1,
        description="How long to wait for a peer's answer to a lane request before asking "
        "again on a later send.",
    )


class MembershipConfig(_Section):
    """SWIM failure detection with the Lifeguard refinements (see mesh/membership)."""

    probe_interval_ms: int = Field(
        1_000,
        ge=10,
        description="How often a node probes one member (round robin). Shorter detects "
        "failures sooner and costs more messages; stretched by the local health score.",
    )
    probe_timeout_ms: int = Field(
        500,
        ge=1,
        description="How long a direct ping waits for its ack before members are asked to "
        "ping indirectly; must stay below probe_interval_ms. Set above the network's round "
        "trip at the 99th percentile.",
    )
    indirect_probes: int = Field(
        3,
        ge=0,
        le=16,
        description="Members asked to ping a silent member on our behalf; also the number of "
        "independent suspicions that shrink a suspicion timeout to its minimum.",
    )
    suspicion_min_multiplier: float = Field(
        4.0,
        ge=1.0,
        description="Shortest suspicion before a member is declared dead: this times "
        "log10(cluster size), at least 1, times probe_interval_ms. Larger means fewer false "
        "deaths and slower detection.",
    )
    suspicion_max_multiplier: float = Field(
        6.0,
        ge=1.0,
        description="Longest suspicion, as a multiple of the shortest: the timeout starts "
        "here and shrinks as other members confirm the suspicion.",
    )
    awareness_max: int = Field(
        8,
        ge=0,
        description="Cap of the local health score: a node that misses its own deadlines "
        "stretches its probe interval and timeout by up to (1 + this) times.",
    )
    retransmit_multiplier: int = Field(
        4,
        ge=1,
        description="Each membership update rides on this times log10(cluster size + 1) "
        "outgoing messages; more spreads updates more surely at the cost of bytes.",
    )
    piggyback_updates_max: int = Field(
        8, ge=0, description="Membership updates carried by one protocol message."
    )
    push_pull_interval_ms: int = Field(
        30_000,
        ge=100,
        description="How often a node swaps its whole member table with one random member "
        "(and, while any are dead, tries one dead member's address so that healed "
        "partitions reunite).",
    )
    join_retry_interval_ms: int = Field(
        1_000, ge=10, description="How often seeds are retried while nobody has answered."
    )
    dead_forget_after_ms: int = Field(
        120_000,
        ge=1,
        description="Dead or departed members are forgotten after this; until then a "
        "returning node is recognised and must refute with a higher incarnation.",
    )
    members_max: int = Field(
        4_096,
        ge=1,
        description="Members tracked at most; updates about more are ignored and counted.",
    )
    sync_members_max: int = Field(
        4_096, ge=1, description="Members listed in one push-pull message at most."
    )

    def to_settings(self) -> MembershipSettings:
        """The membership core's settings (seconds) from this section (milliseconds)."""
        return MembershipSettings(
            probe_interval_s=self.probe_interval_ms / 1000,
            probe_timeout_s=self.probe_timeout_ms / 1000,
            indirect_probes=self.indirect_probes,
            suspicion_min_multiplier=self.suspicion_min_multiplier,
            suspicion_max_multiplier=self.suspicion_max_multiplier,
            awareness_max=self.awareness_max,
            retransmit_multiplier=self.retransmit_multiplier,
            piggyback_updates_max=self.piggyback_updates_max,
            push_pull_interval_s=self.push_pull_interval_ms / 1000,
            join_retry_interval_s=self.join_retry_interval_ms / 1000,
            dead_forget_after_s=self.dead_forget_after_ms / 1000,
            members_max=self.members_max,
            sync_members_max=self.sync_members_max,
        )

    @model_validator(mode="after")
    def _ordered(self) -> MembershipConfig:
        if self.probe_timeout_ms >= self.probe_interval_ms:
            raise ValueError(
                f"probe_timeout_ms ({self.probe_timeout_ms}) must be below "
                f"probe_interval_ms ({self.probe_interval_ms})"
            )
        return self


class GossipConfig(_Section):
    """Eventually consistent shared state spread by anti-entropy (see consensus/gossip)."""

    round_interval_ms: int = Field(
        200,
        ge=10,
        description="How often a node starts a push-pull exchange with `fanout` random live "
        "members. Shorter spreads faster and costs more digests.",
    )
    fanout: int = Field(3, ge=1, le=64, description="Members contacted per round.")
    rumor_retransmit_multiplier: int = Field(
        3,
        ge=0,
        description="A new update is pushed as a rumour this times log2(cluster size + 1) "
        "times before anti-entropy alone carries it.",
    )
    rumor_queue_max: int = Field(
        4_096, ge=1, description="Rumours waiting to be pushed; the oldest are dropped first."
    )
    rumors_per_message_max: int = Field(64, ge=0, description="Rumours carried by one message.")
    deltas_per_message_max: int = Field(
        512,
        ge=1,
        description="Entries sent in answer to one digest; a larger backlog is sent over "
        "several rounds, lowest versions first.",
    )
    message_bytes_max: int = Field(
        512 * 1024,
        ge=1024,
        description="Size budget of one gossip message's entries; keep it below "
        "envelope.envelope_size_bytes_max.",
    )
    keys_max: int = Field(
        100_000,
        ge=1,
        description="Keys (with tombstones) one node holds; writes beyond it are refused.",
    )
    key_bytes_max: int = Field(256, ge=1, description="Longest key, in UTF-8 bytes.")
    value_bytes_max: int = Field(
        64 * 1024, ge=1, description="Largest value, as encoded msgpack bytes."
    )
    subscription_queue_max: int = Field(
        1_024,
        ge=1,
        description="Changes buffered per subscriber; a subscriber that falls further "
        "behind loses the oldest and is told how many it missed.",
    )
    tombstone_grace_ms: int = Field(
        300_000,
        ge=0,
        description="A deleted key's tombstone is collected only once every live member has "
        "seen it and it is this old. A member that was away when a tombstone was collected "
        "keeps the deleted value until the key is written again; longer protects members "
        "that return later, at the cost of memory for deleted keys.",
    )

    def to_settings(self) -> GossipSettings:
        """The gossip core's settings (seconds) from this section (milliseconds)."""
        return GossipSettings(
            round_interval_s=self.round_interval_ms / 1000,
            fanout=self.fanout,
            rumor_retransmit_multiplier=self.rumor_retransmit_multiplier,
            rumor_queue_max=self.rumor_queue_max,
            rumors_per_message_max=self.rumors_per_message_max,
            deltas_per_message_max=self.deltas_per_message_max,
            message_bytes_max=self.message_bytes_max,
            keys_max=self.keys_max,
            key_bytes_max=self.key_bytes_max,
            value_bytes_max=self.value_bytes_max,
            tombstone_grace_s=self.tombstone_grace_ms / 1000,
        )



class RaftConfig(_Section):
    """The Raft voters and the replicated KV store they serve (see consensus/raft)."""

    voters: list[str] = Field(
        default_factory=list,
        max_length=9,
        description="Node ids (hex) of the Raft voters, the same list on every node (3 or 5; "
        "`agentmesh up --voters N` fills it in). A node in the list keeps the replicated "
        "log; every other node forwards KV requests to them. Empty: no replicated store. "
        "Read once, when a voter first starts; later changes go through the cluster.",
    )
    heartbeat_interval_ms: int = Field(
        50,
        ge=1,
        description="How often the leader heartbeats; also the Raft tick. Must be well "
        "below election_timeout_ms.",
    )
    election_timeout_ms: int = Field(
        500,
        ge=2,
        description="A follower that hears no leader for a random time between this and "
        "twice this campaigns. Shorter fails over sooner; longer rides out pauses (GC, a "
        "slow disk) without needless elections.",
    )
    fsync: bool = Field(
        True,
        description="fsync the log before anything that depends on it leaves the node. "
        "Turning it off loses acknowledged writes at a power cut; for throwaway tests only.",
    )
    fsync_on_thread: bool = Field(
        False,
        description="Run each fsync on a worker thread so the node keeps receiving "
        "meanwhile. Pays off with a slow disk and idle cores; with a fast disk and busy "
        "cores the hand-over of the interpreter lock costs more than the fsync, so the "
        "default syncs on the event loop.",
    )
    announce_commit_at_once: bool = Field(
        False,
        description="Send a new commit index to the followers in an append of its own "
        "as soon as it advances. Off, it rides on the next append or heartbeat: at low "
        "load that saves an append and its acknowledgement per follower per write, and "
        "followers apply up to one heartbeat later (reads are unaffected).",
    )
    max_entries_per_append: int = Field(
        4096, ge=1, description="Most log entries in one append message."
    )
    max_bytes_per_append: int = Field(
        512 * 1024,
        ge=1,
        description="Most entry bytes in one append message, and the largest request; "
        "keep it below envelope.envelope_size_bytes_max.",
    )
    writes_per_entry_max: int = Field(
        256,
        ge=1,
        description="Client key writes (put, delete, compare-and-set) that arrive "
        "together, in one envelope, the leader joins into one log entry at most: the "
        "entry's Raft, log and network work is then paid once for them. Also bounded "
        "by max_bytes_per_append. 1 gives every write an entry of its own, which voters "
        "of versions before batch entries can apply: keep it at 1 until every voter "
        "runs a version that has this field.",
    )
    max_inflight_appends: int = Field(
        256, ge=1, description="Appends sent to one follower and not yet acknowledged."
    )
    max_uncommitted_bytes: int = Field(
        64 * _MIB,
        ge=1,
        description="Bytes of requests the leader holds uncommitted; beyond it requests are "
        "answered 'unavailable' until commits catch up.",
    )
    snapshot_interval_entries: int = Field(
        10_000,
        ge=1,
        description="Snapshot the KV store and compact the log every this many applied "
        "requests (a batch entry counts each of its writes); fewer means faster restarts "
        "and catch-up, more snapshot work.",
    )
    snapshot_keep_entries: int = Field(
        20_000,
        ge=0,
        description="Requests kept in the log below a snapshot (the entries that hold "
        "them), so that followers a busy pipeline's worth behind catch up from the log "
        "rather than by a whole snapshot. Keep it above the writes in flight at peak "
        "(clients' outstanding requests).",
    )
    calls_pending_max: int = Field(
        100_000,
        ge=1,
        description="Client requests a voter holds at once (waiting to commit or for a read "
        "index); more are answered 'unavailable' at once.",
    )
    call_timeout_ms: int = Field(
        10_000,
        ge=1,
        description="A voter answers 'unavailable' to a request still waiting after this "
        "long, so requests lost to a leader change do not pile up.",
    )
    lease_tick_interval_ms: int = Field(
        500,
        ge=10,
        description="While leases exist, the leader proposes a time tick this often so "
        "that leases and locks expire without other traffic; bounds how late they expire.",
    )
    client_attempt_timeout_ms: int = Field(
        300,
        ge=1,
        description="A client gives up on a voter that has answered nothing at all for "
        "this long and retries elsewhere (same session and sequence number, so a write "
        "applies once). A busy voter that keeps answering other requests is waited for. "
        "For twice election_timeout_ms, or until it answers, the client does not follow "
        "redirects back to a voter it gave up on: the survivors of a crashed leader name it "
        "until they elect another.",
    )
    client_retry_interval_ms: int = Field(
        25,
        ge=1,
        description="A client's pause before retrying after 'unavailable' (no leader yet).",
    )
    client_timeout_ms: int = Field(
        15_000,
        ge=1,
        description="How long a client keeps retrying one request before giving up with "
        "an error (a write's outcome is then unknown).",
    )
    client_batch_calls_max: int = Field(
        256,
        ge=1,
        description="Requests a client sends in one envelope at most (one signature for "
        "all of them); a full batch leaves at once, so the voter works on it while the "
        "client makes the next. Larger costs fewer signatures, smaller overlaps more.",
    )
    client_sessions_max: int = Field(
        256,
        ge=1,
        description="Store sessions one client opens at most (each takes a window of "
        "concurrent writes, kv_session_window); further writes wait for room.",
    )
    kv_keys_max: int = Field(100_000, ge=1, description="Keys the replicated store holds.")
    kv_value_bytes_max: int = Field(
        256 * 1024, ge=1, description="Largest value in the replicated store."
    )
    kv_sessions_max: int = Field(
        4_096,
        ge=1,
        description="Client sessions remembered for exactly-once retries; the least "
        "recently used beyond it is dropped and its client must start a new session.",
    )
    kv_session_window: int = Field(
        32,
        ge=1,
        description="Responses remembered per client session, so a retried write is "
        "answered rather than applied twice. A client keeps each session's writes in "
        "flight within this many sequence numbers and opens more sessions for more "
        "concurrent writes. Memory: up to kv_sessions_max times this many responses.",
    )

    def raft_settings(self) -> RaftSettings:
        """The Raft core's settings from this section."""
        return RaftSettings(
            tick_interval_s=self.heartbeat_interval_ms / 1000,
            heartbeat_interval_ticks=1,
            election_timeout_ticks=max(2, round(self.election_timeout_ms
                                                / self.heartbeat_interval_ms)),
            max_entries_per_append=self.max_entries_per_append,
            max_bytes_per_append=self.max_bytes_per_append,
            max_inflight_appends=self.max_inflight_appends,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
            announce_commit_at_once=self.announce_commit_at_once,
        )

    def kv_settings(self) -> KVSettings:
        """The replicated store's limits from this section (equal on every voter)."""
        return KVSettings(
            keys_max=self.kv_keys_max,
            value_bytes_max=self.kv_value_bytes_max,
            sessions_max=self.kv_sessions_max,
            session_window=self.kv_session_window,
        )

    def voter_ids(self) -> list[bytes]:
        """The voters as node ids."""
        return [bytes.fromhex(voter) for voter in self.voters]

    @field_validator("voters")
    @classmethod
    def _hex_ids(cls, value: list[str]) -> list[str]:
        for voter in value:
            try:
                node_id = bytes.fromhex(voter)
            except ValueError:
                raise ValueError(f"voter {voter!r} is not a hex node id") from None
            if not 1 <= len(node_id) <= 64:
                raise ValueError(f"voter {voter!r} must be 1 to 64 bytes of hex")
        if len(set(value)) != len(value):
            raise ValueError(f"voters {value} name a node twice")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> RaftConfig:
        if self.election_timeout_ms < 2 * self.heartbeat_interval_ms:
            raise ValueError(
                f"election_timeout_ms ({self.election_timeout_ms}) must be at least twice "
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms})"
            )
        return self


class NodeConfig(_Section):
    """Everything one node needs besides its key and certificate."""

    name: str = Field(
        "node", min_length=1, max_length=64, description="Human-readable node name."
    )
    listen: str = Field(
        "tcp://127.0.0.1:0",
        description="Address the node binds (tcp://HOST:PORT); port 0 picks a free port.",
    )
    advertise: str | None = Field(
        None,
        description="Address other nodes should dial, when it differs from the bound one "
        "(e.g. listening on 0.0.0.0). Default: the bound address.",
    )
    seeds: list[str] = Field(
        default_factory=list,
        description="Addresses of nodes to contact at start; one reachable seed is enough.",
    )
    request_timeout_ms: int = Field(
        2_000, ge=1, description="Default deadline for a request to another node."
    )
    requests_in_flight_max: int = Field(
        1_024,
        ge=1,
        description="Requests awaiting an answer at once; a request beyond it fails at once "
        "instead of queueing.",
    )
    local_queue_messages_max: int = Field(
        10_000,
        ge=1,
        description="Core messages a node addresses to itself (a manager inviting its own "
        "contractor) waiting to be handed over in memory, without sealing or sockets; "
        "beyond it they are dropped and counted as send_dropped.",
    )
    # Sections are frozen, so one default instance can be shared.
    envelope: EnvelopeConfig = EnvelopeConfig()
    transport: TransportConfig = TransportConfig()
    leave_grace_ms: int = Field(
        300,
        ge=0,
        description="On shutdown, how long the node keeps running after announcing that it "
        "leaves, so the announcement reaches other members before the sockets close.",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        le=10_000_000,
        description="Net allocations between collections of Python's youngest garbage "
        "generation in a node process (`gc.set_threshold`); the node also freezes what it "
        "holds once started (`gc.freeze`). Python's default, 700, made a busy Raft leader "
        "spend an eighth of its CPU, in pauses of up to 80 ms, walking objects that never "
        "form cycles. 0 keeps Python's defaults.",
    )
    tick_interval_ms: int = Field(
        50,
        ge=1,
        description="How often protocol cores are ticked; bounds the precision of every "
        "protocol timer.",
    )
    membership: MembershipConfig = MembershipConfig()
    gossip: GossipConfig = GossipConfig()
    raft: RaftConfig = RaftConfig()

    @model_validator(mode="after")
    def _fits_envelope(self) -> NodeConfig:
        if self.raft.voters and (
            self.raft.max_bytes_per_append + 64 * 1024 > self.envelope.envelope_size_bytes_max
        ):
            raise ValueError(
                f"raft.max_bytes_per_append ({self.raft.max_bytes_per_append}) must leave 64 KiB "
                "of room below envelope.envelope_size_bytes_max "
                f"({self.envelope.envelope_size_bytes_max})"
            )
        if self.gossip.message_bytes_max >= self.envelope.envelope_size_bytes_max:
            raise ValueError(
                f"gossip.message_bytes_max ({self.gossip.message_bytes_max}) must be below "
                f"envelope.envelope_size_bytes_max ({self.envelope.envelope_size_bytes_max})"
            )
        return self

    @field_validator("listen", "advertise")
    @classmethod
    def _tcp_address(cls, value: str | None) -> str | None:
        if value is not None:
            check_tcp_address(value)
        return value

    @field_validator("seeds")
    @classmethod
    def _tcp_seeds(cls, value: list[str]) -> list[str]:
        for seed in value:
            check_tcp_address(seed)
        return value


def check_tcp_address(address: str) -> tuple[str, int]:
    """Split ``tcp://HOST:PORT``; raise ``ValueError`` naming the address if malformed."""
    prefix = "tcp://"
    host, sep, port_text = address.removeprefix(prefix).rpartition(":")
    if not address.startswith(prefix) or not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} must look like tcp://HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"address {address!r} has port {port}, above 65535")
    return host, port


def load_config(node_dir: Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Load ``node_dir/node.toml`` (defaults if absent), then apply top-level ``overrides``."""
    path = node_dir / CONFIG_FILE_NAME
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    data.update(overrides or {})
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], source: str = "configuration") -> NodeConfig:
    """Validate a configuration mapping, turning validation errors into one ``ConfigError``."""
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def defaults_toml() -> str:
    """Every configuration field with its default and description, as commented TOML."""
    lines = ["# agentmesh node.toml: every field, its default and its trade-off.", ""]
    lines += _render_section(NodeConfig, prefix=None)
    return "\n".join(lines).rstrip() + "\n"


def _render_section(model: type[BaseModel], prefix: str | None) -> list[str]:
    lines: list[str] = []
    if prefix:
        lines += [f"[{prefix}]"]
        if model.__doc__:
            lines += [f"# {model.__doc__.strip()}", ""]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((name, annotation))
            continue
        default = info.get_default(call_default_factory=True)
        for chunk in _wrap(info.description or ""):
            lines.append(f"# {chunk}")
        rendered = _toml_value(default)
        lines.append(f"{name} = {rendered}" if rendered is not None else f"# {name} = (unset)")
        lines.append("")
    for name, sub in nested:
        lines += _render_section(sub, prefix=name if not prefix else f"{prefix}.{name}")
    return lines


def _toml_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if value >= 10_000 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) or '""' for v in value) + "]"
    raise AssertionError(f"no TOML rendering for {value!r}")


def _wrap(text: str, width: int = 88) -> list[str]:
    words, lines, current = text.split(), [], ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    if current:
        lines.append(current)
    return lines
