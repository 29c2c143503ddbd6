"""Signed envelopes: the one unit that crosses the wire between nodes.

Wire layout of one ZeroMQ frame::

    msgpack([version, kind, sender, recipient, seq, timestamp, trace,
             on_behalf_of, reply_to, certificate, body])  ||  signature (64 bytes)

    signature = Ed25519(sender's key, SIGNING_CONTEXT || SHA-256(the bytes before it))

An envelope addressed to one node whose certificate the sender holds carries,
in the signature's place, a link MAC (``version`` 3 instead of 2): keyed
BLAKE2b-512 over the same bytes, under the key only those two nodes can
derive (``mesh.link_keys``). Checking one costs about 2 us against 100 us
for a signature here, on every hop of a replicated write.

``sender``/``recipient`` are 16-byte node ids, ``seq`` the sender's sequence
number, ``timestamp`` a hybrid-logical-clock value (see ``consensus.hlc``), ``trace``
an optional W3C traceparent, ``on_behalf_of`` an optional principal, ``reply_to``
the sequence number of the request this envelope answers, ``certificate`` the
sender's certificate (carried by hellos, requests and responses), and ``body`` a
list of payloads of one ``kind``: a batch pays for one signature. The Ed25519
signature covers every byte before it through their SHA-256 digest: Ed25519
hashes what it signs twice (SHA-512) and what it verifies once, so signing a
32-byte digest instead of a batch of 50 KB costs 50 instead of 146 us, and
verifying 83 instead of 161 (SHA-256 runs in hardware here). The context
string keeps an envelope's signature from meaning anything else.

``EnvelopeOpener.open`` checks, in this order, and names the first failure:
size (``too_large``), decoding (``malformed``), a certified sender
(``unknown_sender``), the signature (``bad_signature``), the replay window and
recipient (``replay``; a link MAC's recipient is checked before the MAC, which
only the recipient can check), the clock skew bound (``clock_skew``) and the payload
schema (``bad_payload``). Cheap checks come first, so garbage costs little.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from consensus.hlc import HybridClock, wall_ms_of
from mesh.codec import pack, unpack
from mesh.config import EnvelopeConfig
from mesh.errors import CertificateError, CodecError
from mesh.identity import NODE_ID_BYTES, SIGNATURE_BYTES, Certificate, Identity
from mesh.link_keys import LinkKeys, link_mac, link_mac_valid
from mesh.replay import ReplayWindow
from mesh.trust import TrustedSender, TrustStore

__all__ = [
    "LINK_WIRE_VERSION",
    "SIGNATURE_BYTES",
    "SIGNING_CONTEXT",
    "WIRE_VERSION",
    "Envelope",
    "EnvelopeOpener",
    "EnvelopeSealer",
    "ParallelMap",
    "PayloadRegistry",
    "Rejected",
    "Rejection",
    "signing_digest",
]

WIRE_VERSION = 2
"""2: the signature covers the envelope's SHA-256 digest (1 signed the bytes)."""
LINK_WIRE_VERSION = 3
"""The same envelope authenticated by a link MAC instead of a signature."""
SIGNING_CONTEXT = b"agentmesh envelope v2\x00"
_HEADER_FIELDS = 11
_TEXT_FIELD_CHARS_MAX = 256
_KIND_CHARS_MAX = 64
_SEQ_MAX = (1 << 64) - 1


class Rejection(enum.Enum):
    """Why a received frame was refused, in the order the checks run."""

    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    UNKNOWN_SENDER = "unknown_sender"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    CLOCK_SKEW = "clock_skew"
    BAD_PAYLOAD = "bad_payload"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A refused frame: the reason (counted) and a detail (for logs)."""

    reason: Rejection
    detail: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """A verified envelope and its validated payloads."""

    kind: str
    sender: bytes
    recipient: bytes | None
    seq: int
    timestamp: int
    trace: str | None
    on_behalf_of: str | None
    reply_to: int | None
    sender_certificate: Certificate
    payloads: tuple[BaseModel, ...]
    link_mac: bool = False
    """Authenticated by a link MAC (proof to this node alone), not a signature."""


@dataclass(frozen=True, slots=True)
class _Authenticating:
    """A decoded frame from a certified sender, waiting for its signature check."""

    fields: list[Any]
    signed: bytes
    signature: bytes
    sender: bytes
    trusted: TrustedSender
    link_key: bytes | None  # set when the frame carries a link MAC


def signing_digest(signed: bytes) -> bytes:
    """What an envelope's signature signs: the context and the SHA-256 of ``signed``
    (every byte of the frame before the signature)."""
    return SIGNING_CONTEXT + hashlib.sha256(signed).digest()


def _signature_valid(item: _Authenticating) -> bool:
    if item.link_key is not None:
        return link_mac_valid(item.link_key, item.signed, item.signature)
    return item.trusted.signature_valid(item.signature, signing_digest(item.signed))


ParallelMap = Callable[[Callable[[_Authenticating], bool], list[_Authenticating]], list[bool]]
"""Applies a function to every item, possibly on several threads; results in order."""


class PayloadRegistry:
    """Maps a message kind to the pydantic model that validates its payloads."""

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {}

    def register(self, kind: str, model: type[BaseModel]) -> None:
        """Register ``model`` for ``kind``; a kind is registered once."""
        if not kind or len(kind) > _KIND_CHARS_MAX:
            raise ValueError(f"message kind {kind!r} must have 1 to {_KIND_CHARS_MAX} characters")
        existing = self._models.get(kind)
        if existing is not None and existing is not model:
            raise ValueError(f"message kind {kind!r} is already registered to {existing.__name__}")
        self._models[kind] = model

    def model_for(self, kind: str) -> type[BaseModel] | None:
        """The model registered for ``kind``, or None."""
        return self._models.get(kind)

    def kinds(self) -> list[str]:
        """Registered kinds, sorted."""
        return sorted(self._models)


class EnvelopeSealer:
    """Builds and signs envelopes for one sender.

    ``first_seq`` should exceed every sequence number this identity used before;
    the runtime passes its boot time in microseconds. Sequence numbers then follow
    the wall clock in microseconds (``wall_us``, else ``wall_ms * 1000``; one more
    than the last when that is not larger), so a sender sending fewer than a million envelopes
    per second never runs ahead of time. That is what lets several processes
    share one identity (two CLI commands at once): their numbers interleave by
    time, and a receiver's replay window (the last ``replay_window_messages``
    numbers it accepted) refuses only an envelope that arrives after that many
    later ones.
    """

    def __init__(
        self,
        identity: Identity,
        certificate: Certificate,
        first_seq: int,
        *,
        links: LinkKeys | None = None,
    ) -> None:
        assert certificate.node_id == identity.node_id, "certificate belongs to another key"
        self.identity = identity
        self.links = links
        """Set: envelopes to a node whose certificate we hold carry a link MAC."""
        self._certificate_wire = certificate.to_wire()
        self._next_seq = first_seq
        self.clock = HybridClock()

    def seal(
        self,
        kind: str,
        payloads: Sequence[BaseModel],
        *,
        wall_ms: int,
        recipient: bytes | None = None,
        trace: str | None = None,
        on_behalf_of: str | None = None,
        reply_to: int | None = None,
        attach_certificate: bool = False,
        wall_us: int | None = None,
    ) -> tuple[int, bytes]:
        """Sign ``payloads`` (at least one) as one envelope; returns (seq, frame).

        Addressed to a node whose link key we have (``links``), the envelope
        carries a link MAC instead of a signature.
        """
        assert payloads, "an envelope carries at least one payload"
        seq = max(self._next_seq, wall_ms * 1000 if wall_us is None else wall_us)
        self._next_seq = seq + 1
        links = self.links
        link_key = (
            links.sending_key(recipient) if links is not None and recipient is not None else None
        )
        header_and_body = pack(
            [
                WIRE_VERSION if link_key is None else LINK_WIRE_VERSION,
                kind,
                self.identity.node_id,
                recipient,
                seq,
                self.clock.now(wall_ms),
                trace,
                on_behalf_of,
                reply_to,
                self._certificate_wire if attach_certificate else None,
                _dump(payloads),
            ]
        )
        if link_key is not None:
            return seq, header_and_body + link_mac(link_key, header_and_body)
        return seq, header_and_body + self.identity.sign(signing_digest(header_and_body))


def _dump(payloads: Sequence[BaseModel]) -> Sequence[Any]:
    """The payloads as plain data: in one call into pydantic's core when they are all
    of one model, as a body nearly always is (about half the cost per payload)."""
    model = type(payloads[0])
    if len(payloads) > 1 and all(type(p) is model for p in payloads):
        return _body_adapter(model).dump_python(tuple(payloads))  # type: ignore[no-any-return]
    return [p.model_dump() for p in payloads]


@functools.lru_cache(maxsize=256)
def _body_adapter(model: type[BaseModel]) -> TypeAdapter[tuple[BaseModel, ...]]:
    """Validates and dumps a whole body of ``model``'s payloads in one call into
    pydantic's core: about a third less per payload than a call per payload."""
    return TypeAdapter(tuple[model, ...])  # type: ignore[valid-type]


class EnvelopeOpener:
    """Verifies received frames for one node and counts every refusal by reason."""

    def __init__(
        self,
        *,
        local_node_id: bytes,
        limits: EnvelopeConfig,
        trust: TrustStore,
        registry: PayloadRegistry,
        clock: HybridClock,
        links: LinkKeys | None = None,
    ) -> None:
        self.local_node_id = local_node_id
        self.links = links
        """Set: envelopes with a link MAC are checked; otherwise they are 'malformed'."""
        self.limits = limits
        self.trust = trust
        self.registry = registry
        self.clock = clock
        self.accepted = 0
        self.accepted_by_link_mac = 0
        """Of ``accepted``, the envelopes a link MAC authenticated."""
        self.rejected: dict[Rejection, int] = {reason: 0 for reason in Rejection}
        self._windows: dict[bytes, ReplayWindow] = {}

    def rejected_by_name(self) -> dict[str, int]:
        """Rejection counters keyed by reason name (``too_large``, ...)."""
        return {reason.value: count for reason, count in self.rejected.items()}

    def open(self, frame: bytes, *, wall_ms: int, now_unix_s: float) -> Envelope | Rejected:
        """Verify ``frame``; return the envelope, or the first reason to refuse it."""
        return self.open_many([frame], wall_ms=wall_ms, now_unix_s=now_unix_s)[0]

    def open_many(
        self,
        frames: Sequence[bytes],
        *,
        wall_ms: int,
        now_unix_s: float,
        parallel_map: ParallelMap | None = None,
    ) -> list[Envelope | Rejected]:
        """Verify a batch of frames received in this order; one outcome per frame.

        Each frame meets the same checks in the same order as ``open``. Only the
        signature checks, which depend on nothing but the frame, may run at once
        through ``parallel_map`` (Ed25519 verification releases the GIL); replay
        windows are then consulted frame by frame in arrival order.
        """
        prechecked = [self._precheck(frame, now_unix_s) for frame in frames]
        to_verify = [p for p in prechecked if isinstance(p, _Authenticating)]
        if parallel_map is not None and len(to_verify) > 1:
            verdicts = parallel_map(_signature_valid, to_verify)
        else:
            verdicts = [_signature_valid(p) for p in to_verify]
        verdict_of = iter(verdicts)
        outcomes: list[Envelope | Rejected] = []
        for item in prechecked:
            if isinstance(item, _Authenticating):
                outcome = (
                    self._postcheck(item, wall_ms)
                    if next(verdict_of)
                    else Rejected(
                        Rejection.BAD_SIGNATURE,
                        f"{'signature' if item.link_key is None else 'link MAC'} of "
                        f"{item.sender.hex()} does not verify",
                    )
                )
            else:
                outcome = item
            if isinstance(outcome, Rejected):
                self.rejected[outcome.reason] += 1
            else:
                self.accepted += 1
                if outcome.link_mac:
                    self.accepted_by_link_mac += 1
            outcomes.append(outcome)
        return outcomes

    def _precheck(self, frame: bytes, now_unix_s: float) -> _Authenticating | Rejected:
        """Size, decoding, shape and sender: everything before the signature."""
        limits = self.limits
        if len(frame) > limits.envelope_size_bytes_max:
            return Rejected(
                Rejection.TOO_LARGE,
                f"{len(frame)} bytes > envelope_size_bytes_max ({limits.envelope_size_bytes_max})",
            )
        if len(frame) <= SIGNATURE_BYTES:
            return Rejected(Rejection.MALFORMED, f"frame of {len(frame)} bytes is too short")
        signed, signature = frame[:-SIGNATURE_BYTES], frame[-SIGNATURE_BYTES:]
        try:
            fields = unpack(signed, max_bytes=limits.envelope_size_bytes_max)
        except CodecError as exc:
            return Rejected(Rejection.MALFORMED, str(exc))
        problem = self._shape_problem(fields)
        if problem:
            return Rejected(Rejection.MALFORMED, problem)
        sender, certificate_wire = fields[2], fields[9]
        try:
            trusted = self.trust.resolve(sender, certificate_wire, now_unix_s)
        except CertificateError as exc:
            return Rejected(Rejection.UNKNOWN_SENDER, str(exc))
        if fields[0] == WIRE_VERSION:
            return _Authenticating(fields, signed, signature, sender, trusted, None)
        recipient = fields[3]
        if recipient != self.local_node_id:
            return Rejected(Rejection.REPLAY, f"link MAC for {recipient.hex()}, not for this node")
        assert self.links is not None  # the shape check admits version 3 only then
        link_key = self.links.receiving_key(sender, trusted.certificate.public_key)
        if link_key is None:
            return Rejected(
                Rejection.BAD_SIGNATURE, f"no link key with {sender.hex()}: its key is unusable"
            )
        return _Authenticating(fields, signed, signature, sender, trusted, link_key)

    def _postcheck(self, item: _Authenticating, wall_ms: int) -> Envelope | Rejected:
        """Recipient, replay, clock skew and payload: everything after the signature."""
        limits = self.limits
        (_, kind, sender, recipient, seq, timestamp, trace, on_behalf_of, reply_to,
         _, body) = item.fields
        if recipient is not None and recipient != self.local_node_id:
            return Rejected(Rejection.REPLAY, f"addressed to {recipient.hex()}, not to this node")
        window = self._window_for(sender)
        if not window.check(seq):
            return Rejected(
                Rejection.REPLAY, f"seq {seq} of {sender.hex()} seen before or below the window"
            )

        sent_ms = wall_ms_of(timestamp)
        if sent_ms - wall_ms > limits.clock_skew_max_ms:
            return Rejected(
                Rejection.CLOCK_SKEW,
                f"timestamp {sent_ms - wall_ms} ms ahead > clock_skew_max_ms "
                f"({limits.clock_skew_max_ms})",
            )
        if wall_ms - sent_ms > limits.message_age_max_ms:
            return Rejected(
                Rejection.CLOCK_SKEW,
                f"timestamp {wall_ms - sent_ms} ms old > message_age_max_ms "
                f"({limits.message_age_max_ms})",
            )
        # Authentic and fresh: the number is used up even if the payload is bad,
        # so the same envelope can never be processed later.
        window.accept(seq)

        model = self.registry.model_for(kind)
        if model is None:
            return Rejected(Rejection.BAD_PAYLOAD, f"no payload type registered for kind {kind!r}")
        try:
            payloads = _body_adapter(model).validate_python(body)
        except ValidationError as exc:
            return Rejected(
                Rejection.BAD_PAYLOAD, f"{kind}: {exc.error_count()} error(s): {exc.errors()[0]}"
            )
        self.clock.observe(timestamp, wall_ms)
        return Envelope(
            kind=kind,
            sender=sender,
            recipient=recipient,
            seq=seq,
            timestamp=timestamp,
            trace=trace,
            on_behalf_of=on_behalf_of,
            reply_to=reply_to,
            sender_certificate=item.trusted.certificate,
            payloads=payloads,
            link_mac=item.link_key is not None,
        )

    def _window_for(self, sender: bytes) -> ReplayWindow:
        window = self._windows.get(sender)
        if window is None:
            # Windows are bounded by the trust store: forget those of senders it evicted.
            if len(self._windows) >= 2 * max(len(self.trust), 1):
                for node_id in [n for n in self._windows if self.trust.get(n) is None]:
                    del self._windows[node_id]
            window = self._windows[sender] = ReplayWindow(self.limits.replay_window_messages)
        return window

    def _shape_problem(self, fields: Any) -> str | None:
        if not isinstance(fields, list) or len(fields) != _HEADER_FIELDS:
            return f"header is not a list of {_HEADER_FIELDS} fields"
        (version, kind, sender, recipient, seq, timestamp, trace, on_behalf_of, reply_to,
         certificate_wire, body) = fields
        if version != WIRE_VERSION and (version != LINK_WIRE_VERSION or self.links is None):
            accepted = (
                f"{WIRE_VERSION}" if self.links is None
                else f"{WIRE_VERSION} or {LINK_WIRE_VERSION}"
            )
            return f"wire version {version!r} is not {accepted}"
        if not isinstance(kind, str) or not 0 < len(kind) <= _KIND_CHARS_MAX:
            return "kind is not a short string"
        if not isinstance(sender, bytes) or len(sender) != NODE_ID_BYTES:
            return "sender is not a 16-byte node id"
        if recipient is not None and (
            not isinstance(recipient, bytes) or len(recipient) != NODE_ID_BYTES
        ):
            return "recipient is not a 16-byte node id"
        if recipient is None and version == LINK_WIRE_VERSION:
            return "a link MAC's envelope names no recipient"
        for name, value in (("seq", seq), ("timestamp", timestamp)):
            if type(value) is not int or not 0 <= value <= _SEQ_MAX:
                return f"{name} is not an unsigned 64-bit integer"
        if reply_to is not None and (type(reply_to) is not int or not 0 <= reply_to <= _SEQ_MAX):
            return "reply_to is not an unsigned 64-bit integer"
        for name, value in (("trace", trace), ("on_behalf_of", on_behalf_of)):
            if value is not None and (
                not isinstance(value, str) or len(value) > _TEXT_FIELD_CHARS_MAX
            ):
                return f"{name} is not a string of at most {_TEXT_FIELD_CHARS_MAX} characters"
        if certificate_wire is not None and not isinstance(certificate_wire, list):
            return "certificate is not a list"
        if not isinstance(body, list) or not 0 < len(body) <= self.limits.batch_entries_max:
            return f"body is not a list of 1 to {self.limits.batch_entries_max} payloads"
        return None
