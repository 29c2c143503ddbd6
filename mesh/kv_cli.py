"""``agentmesh kv ...`` and ``agentmesh lock ...``: the replicated store from the shell.

How this works: each invocation is a short-lived ``KVClient`` speaking with the
cluster's CLI identity (``client/`` in the cluster directory) to the nodes in
``cluster.json``; it follows redirects to the Raft leader and retries until
``--timeout``. Writes are linearizable and applied once; reads are linearizable.

Values: ``kv put`` and ``kv cas`` store VALUE's UTF-8 bytes (``--base64``: VALUE
is base64 of arbitrary bytes), or with ``--file PATH`` the bytes of a file as
they are (``-``: standard input). A file is how a value larger than the system's
limit on one argument (128 KiB on Linux) gets in, up to the client's
``raft.max_bytes_per_append`` and the store's ``kv_value_bytes_max``. Output
shows a value as a UTF-8 string; a value that is not valid UTF-8 is shown in
base64, under ``value_base64`` instead of ``value`` in JSON and as
``base64:...`` in ``kv list``'s text.

Locks: the default owner is ``cli/<node id of the CLI identity>``, the same for
every invocation with the same cluster directory, so a lock taken by one
``lock acquire`` can be released by a later ``lock release``.

Exit codes (every command):

- 0: done;
- 1: the key or lock does not exist (``kv get``, ``kv del``, ``lock release``,
  ``lock holder``), the store refused the request for another reason (a size
  limit...), or an operating error (no cluster file, bad identity...);
- 2: no voter answered within ``--timeout`` (no leader, no quorum): a write's
  outcome is unknown (argparse also exits 2 on a usage error, with the usage);
- 3: a condition refused the write: ``kv cas`` found another version (its
  current version is shown), ``lock acquire`` found the lock held by another
  owner, or ``lock release`` named an owner or token that does not hold it (the
  holder and its token are shown).

With ``--json``, every answer from the cluster, refusals included (exit 1 and
3), prints one JSON object on stdout (``"error"`` set to the store's error code
on a refusal); exit 2 and operating errors print only a message on stderr.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from consensus.kvstore import ErrorCode, Response
from consensus.kvstore.wire import show
from mesh.config import RaftConfig
from mesh.errors import MeshError
from mesh.kv_client import KVClient, KVError, KVUnavailable
from mesh.kv_messages import KVItem
from mesh.layout import read_cluster_file
from mesh.status import open_client

__all__ = [
    "EXIT_ABSENT",
    "EXIT_REFUSED",
    "EXIT_UNAVAILABLE",
    "default_lock_owner",
    "register",
    "show_value",
]

EXIT_ABSENT = 1
"""The key or lock does not exist (also: other refusals and operating errors)."""
EXIT_UNAVAILABLE = 2
"""No voter answered in time; a write's outcome is unknown."""
EXIT_REFUSED = 3
"""A compare-and-set or a lock's owner check refused the write."""

_DEFAULT_TIMEOUT_S = 15.0

_COMMON_EPILOG = (
    "exit codes: 0 done; 1 no such key or lock, other refusal or operating error; "
    "2 no voter answered within --timeout (a write's outcome is unknown), or a usage "
    "error; "
    "3 refused by a condition (cas version, lock held by another owner). "
    "With --json, every answer (refusals included) is one JSON object on stdout."
)


class KVCommandError(MeshError):
    """A command-line argument the store cannot take (e.g. a VALUE that is not base64)."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a command prints and its exit code.

    ``data`` goes to stdout with ``--json``. Without it, on success ``text`` goes
    to stdout; on failure ``text`` goes to stderr (always, with ``--json`` too).
    ``text`` None prints nothing.
    """

    code: int
    data: dict[str, Any] | None
    text: str | bytes | None


def show_value(value: bytes) -> dict[str, str]:
    """``{"value": text}`` for UTF-8 bytes, else ``{"value_base64": base64}``."""
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def default_lock_owner(node_id: bytes) -> str:
    """The lock owner of every CLI invocation with this CLI identity."""
    return f"cli/{node_id.hex()}"


# -- the parser ----------------------------------------------------------------------


def register(commands: Any) -> None:
    """Add ``kv`` and ``lock`` to the ``agentmesh`` subcommands."""
    kv = commands.add_parser(
        "kv", help="read and write the replicated (Raft) KV store",
        description="Read and write the replicated KV store (linearizable).",
        epilog=_COMMON_EPILOG,
    ).add_subparsers(dest="kv_command", required=True)

    put = _sub(kv, "put", "write a key",
               "prints 'version N' (JSON: {key, ok, version, index})")
    put.add_argument("key")
    _value_arguments(put)
    put.set_defaults(operation=_put)

    get = _sub(kv, "get", "print one key's value",
               "prints the value (raw bytes) and a newline (JSON: {key, value, version}, or "
               "value_base64 instead of value when the bytes are not UTF-8); a missing key "
               "exits 1 (JSON: {key, error: not_found})")
    get.add_argument("key")
    get.set_defaults(operation=_get)

    cas = _sub(kv, "cas", "write a key only if it is at the expected version",
               "prints 'version N' (JSON: {key, ok: true, version}); if the key is at "
               "another version, exits 3 and shows the current one (JSON: {key, ok: "
               "false, error: cas_failed, version})")
    cas.add_argument("key")
    _value_arguments(cas)
    cas.add_argument("--expect-version", type=_natural, required=True,
                     help="the version the key must be at (0: the key must be absent)")
    cas.set_defaults(operation=_cas)

    delete = _sub(kv, "del", "delete a key",
                  "prints 'deleted' (JSON: {key, ok: true}); a missing key exits 1 "
                  "(JSON: {key, ok: false, error: not_found})")
    delete.add_argument("key")
    delete.set_defaults(operation=_delete)

    listing = _sub(kv, "list", "list keys under a prefix, in key order",
                   "prints one line per key: KEY, VERSION and the value as a JSON string "
                   "(or base64:... when not UTF-8), tab-separated; a note on stderr when "
                   "more keys follow (JSON: {items: [{key, value, version}], truncated})")
    listing.add_argument("prefix", nargs="?", default="", help="key prefix (default: all)")
    listing.add_argument("--limit", type=_positive_int, default=1000,
                         help="most keys listed (default 1000)")
    listing.add_argument("--start-after", help="list keys after this one (paging)")
    listing.set_defaults(operation=_list)

    lock = commands.add_parser(
        "lock", help="locks with fencing tokens in the replicated store",
        description="Locks with fencing tokens, each backed by a lease. The default owner "
        "is 'cli/<node id of the cluster's CLI identity>', the same for every invocation.",
        epilog=_COMMON_EPILOG,
    ).add_subparsers(dest="lock_command", required=True)

    acquire = _sub(lock, "acquire", "take a lock (or renew it, if this owner holds it)",
                   "prints 'token T lease L owner O' (JSON: {name, ok: true, owner, token, "
                   "lease_id, deadline_ms}); held by another owner: exits 3 naming the holder "
                   "and its token (JSON: {name, ok: false, error: lock_held, holder, token})")
    acquire.add_argument("name")
    acquire.add_argument("--ttl", type=_positive_float, required=True,
                         help="seconds the lock lasts unless renewed")
    acquire.add_argument("--owner", help="owner name (default: cli/<CLI node id>)")
    acquire.set_defaults(operation=_lock_acquire)

    release = _sub(lock, "release", "release a lock this owner holds",
                   "prints 'released' (JSON: {name, ok: true, token}); not held: exits 1 "
                   "(error not_found); held by another owner or with another token: exits 3 "
                   "naming the holder and its token (error not_owner)")
    release.add_argument("name")
    release.add_argument("--owner", help="owner name (default: cli/<CLI node id>)")
    release.add_argument("--token", type=_positive_int,
                         help="the fencing token held (default: the current holder's)")
    release.set_defaults(operation=_lock_release)

    holder = _sub(lock, "holder", "show who holds a lock",
                  "prints 'OWNER token T lease L' (JSON: {name, owner, token, lease_id, "
                  "deadline_ms}); not held: exits 1 (JSON: {name, error: not_found})")
    holder.add_argument("name")
    holder.set_defaults(operation=_lock_holder)


def _sub(group: Any, name: str, help_text: str, output: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=help_text, description=f"{help_text[0].upper()}{help_text[1:]}.",
        epilog=f"output: {output}. {_COMMON_EPILOG}",
    )
    parser.add_argument("--cluster", required=True, type=Path, help="cluster directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=_positive_float, default=_DEFAULT_TIMEOUT_S,
                        help=f"seconds to keep retrying before exit 2 "
                             f"(default {_DEFAULT_TIMEOUT_S:g})")
    parser.set_defaults(handler=run_command)
    return parser


def _value_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("value", nargs="?",
                        help="the value, stored as its UTF-8 bytes (or give --file)")
    parser.add_argument("--base64", action="store_true",
                        help="VALUE is base64 of the bytes to store")
    parser.add_argument("--file", metavar="PATH",
                        help="store the bytes of this file instead of VALUE ('-': stdin)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    value = _natural(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


# -- running a command ---------------------------------------------------------------


Operation = Callable[[KVClient, argparse.Namespace, str], Awaitable[_Outcome]]


def run_command(args: argparse.Namespace) -> int:
    """Run the ``kv`` or ``lock`` subcommand in ``args``; print; return the exit code."""
    if "base64" in args:
        args.value = _value_of(args)  # a bad VALUE fails here, before connecting
    outcome = anyio.run(_run, args)
    if args.json and outcome.data is not None:
        print(json.dumps(outcome.data))
    if outcome.code == 0:
        if not args.json:
            _write(sys.stdout, outcome.text)
    else:
        _write(sys.stderr, b"agentmesh: " + _encode(outcome.text or ""))
    return outcome.code


def _write(stream: Any, text: str | bytes | None) -> None:
    if text is None:
        return
    stream.flush()
    stream.buffer.write(_encode(text) + b"\n")
    stream.buffer.flush()


def _shown(text: str) -> str:
    """``text`` quoted for a message as the store's errors show values (a long one
    cut), with its length when cut."""
    quoted = show(text)
    return quoted if quoted == repr(text) else f"{quoted} ({len(text)} characters)"


def _encode(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "backslashreplace")


async def _run(args: argparse.Namespace) -> _Outcome:
    operation: Operation = args.operation
    async with _connect(args.cluster, args.timeout) as (client, owner):
        try:
            return await operation(client, args, owner)
        except KVUnavailable as exc:
            return _Outcome(EXIT_UNAVAILABLE, None, f"unavailable: {exc}")
        except KVError as exc:  # KVInvalid: the cluster refused the call as malformed
            return _Outcome(EXIT_ABSENT, None, f"error: {exc}")


@asynccontextmanager
async def _connect(cluster: Path, timeout_s: float) -> AsyncIterator[tuple[KVClient, str]]:
    """``KVClient.connect`` with the client timeout set to ``timeout_s``; and the
    default lock owner of this CLI identity."""
    addresses = [str(entry["listen"]) for entry in read_cluster_file(cluster)]
    node = open_client(cluster)
    config = node.config.raft.model_copy(
        update={"client_timeout_ms": max(1, round(timeout_s * 1000))})
    async with KVClient.running(node, config, lambda: addresses) as client:
        yield client, default_lock_owner(node.node_id)


def _value_of(args: argparse.Namespace) -> bytes:
    if args.file is not None:
        if args.value is not None:
            raise KVCommandError("give VALUE or --file, not both")
        if args.base64:
            raise KVCommandError("--base64 is for VALUE; --file stores the file's bytes as "
                                 "they are")
        return _read_value_file(args.file, RaftConfig().max_bytes_per_append)
    if args.value is None:
        raise KVCommandError("give VALUE, or --file PATH")
    if not args.base64:
        return str(args.value).encode("utf-8")
    try:
        return base64.b64decode(args.value, validate=True)
    except (binascii.Error, ValueError):
        raise KVCommandError(f"VALUE {_shown(args.value)} is not valid base64") from None


def _read_value_file(name: str, limit: int) -> bytes:
    """The bytes of file ``name`` (``-``: standard input), refusing more than ``limit``."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(limit + 1)
    except OSError as exc:
        raise KVCommandError(f"cannot read --file {name}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise KVCommandError(f"--file {name} holds more than raft.max_bytes_per_append "
                             f"({limit}) bytes; a request can carry no more")
    return data


def _refused(response: Response, data: dict[str, Any], what: str) -> _Outcome:
    """A refusal other than the ones each command expects: exit 1 with the store's reason."""
    assert response.error is not None
    detail = f": {response.detail}" if response.detail else ""
    return _Outcome(EXIT_ABSENT, {**data, "ok": False, "error": response.error.value,
                                  "detail": response.detail},
                    f"error: {what} refused ({response.error.value}{detail})")


async def _put(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    key = args.key
    response = await client.put(key, args.value)
    if not response.ok:
        return _refused(response, {"key": key}, f"put of {_shown(key)}")
    return _Outcome(0, {"key": key, "ok": True, "version": response.version,
                        "index": response.index}, f"version {response.version}")


async def _get(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    key = args.key
    item = await client.get(key)
    if item is None:
        return _Outcome(EXIT_ABSENT, {"key": key, "error": ErrorCode.NOT_FOUND.value},
                        f"error: no key {_shown(key)}")
    return _Outcome(0, {"key": key, **show_value(item.value), "version": item.version},
                    item.value)


async def _cas(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    key, expect = args.key, args.expect_version
    response = await client.compare_and_set(key, args.value, expect)
    if response.error is ErrorCode.CAS_FAILED:
        current = response.version
        state = "absent (version 0)" if current == 0 else f"at version {current}"
        return _Outcome(EXIT_REFUSED,
                        {"key": key, "ok": False, "error": ErrorCode.CAS_FAILED.value,
                         "version": current, "expected_version": expect},
                        f"cas failed: {_shown(key)} is {state}, not at version {expect}")
    if not response.ok:
        return _refused(response, {"key": key}, f"cas of {_shown(key)}")
    return _Outcome(0, {"key": key, "ok": True, "version": response.version,
                        "index": response.index}, f"version {response.version}")


async def _delete(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    key = args.key
    response = await client.delete(key)
    if response.error is ErrorCode.NOT_FOUND:
        return _Outcome(EXIT_ABSENT, {"key": key, "ok": False,
                                      "error": ErrorCode.NOT_FOUND.value},
                        f"error: no key {_shown(key)}")
    if not response.ok:
        return _refused(response, {"key": key}, f"delete of {_shown(key)}")
    return _Outcome(0, {"key": key, "ok": True, "index": response.index}, "deleted")


async def _list(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    items, truncated = await client.list(args.prefix, limit=args.limit,
                                         start_after=args.start_after)
    lines = [_list_line(item) for item in items]
    if truncated and not args.json:
        print(f"agentmesh: more keys follow; continue with --start-after {items[-1].key!r}",
              file=sys.stderr)
    return _Outcome(0, {"items": [{"key": i.key, **show_value(i.value), "version": i.version}
                                  for i in items],
                        "truncated": truncated},
                    "\n".join(lines) if lines else None)


def _list_line(item: KVItem) -> str:
    shown = show_value(item.value)
    value = (json.dumps(shown["value"], ensure_ascii=False) if "value" in shown
             else "base64:" + shown["value_base64"])
    return f"{item.key}\t{item.version}\t{value}"


async def _lock_acquire(client: KVClient, args: argparse.Namespace, owner: str) -> _Outcome:
    name, owner = args.name, args.owner or owner
    response = await client.lock_acquire(name, args.ttl, owner=owner)
    if response.error is ErrorCode.LOCK_HELD:
        return _Outcome(EXIT_REFUSED,
                        {"name": name, "ok": False, "error": ErrorCode.LOCK_HELD.value,
                         "holder": response.holder, "token": response.token,
                         "lease_id": response.lease_id, "deadline_ms": response.deadline_ms},
                        f"lock {_shown(name)} is held by {response.holder} with token "
                        f"{response.token}")
    if not response.ok:
        return _refused(response, {"name": name}, f"acquiring lock {_shown(name)}")
    return _Outcome(0, {"name": name, "ok": True, "owner": owner, "token": response.token,
                        "lease_id": response.lease_id, "deadline_ms": response.deadline_ms},
                    f"token {response.token} lease {response.lease_id} owner {owner}")


async def _lock_release(client: KVClient, args: argparse.Namespace, owner: str) -> _Outcome:
    name, owner = args.name, args.owner or owner
    response = await client.lock_release(name, token=args.token, owner=owner)
    if response.error is ErrorCode.NOT_FOUND:
        return _Outcome(EXIT_ABSENT, {"name": name, "ok": False,
                                      "error": ErrorCode.NOT_FOUND.value},
                        f"error: lock {_shown(name)} is not held")
    if response.error is ErrorCode.NOT_OWNER:
        mine = f"{owner}" + ("" if args.token is None else f" with token {args.token}")
        return _Outcome(EXIT_REFUSED,
                        {"name": name, "ok": False, "error": ErrorCode.NOT_OWNER.value,
                         "holder": response.holder, "token": response.token},
                        f"lock {_shown(name)} is held by {response.holder} with token "
                        f"{response.token}, not by {mine}")
    if not response.ok:
        return _refused(response, {"name": name}, f"releasing lock {_shown(name)}")
    return _Outcome(0, {"name": name, "ok": True, "token": response.token}, "released")


async def _lock_holder(client: KVClient, args: argparse.Namespace, _owner: str) -> _Outcome:
    name = args.name
    lock = await client.lock_holder(name)
    if lock is None:
        return _Outcome(EXIT_ABSENT, {"name": name, "error": ErrorCode.NOT_FOUND.value},
                        f"error: lock {_shown(name)} is not held")
    return _Outcome(0, {"name": name, "owner": lock.owner, "token": lock.token,
                        "lease_id": lock.lease_id, "deadline_ms": lock.deadline_ms},
                    f"{lock.owner} token {lock.token} lease {lock.lease_id}")
