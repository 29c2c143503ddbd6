"""Submitting a task through a node, so that it is auctioned at once.

A client (``agentmesh task submit``, a script with a ``KVClient``) sends
``cnet.submit`` to a node of the cluster; that node's contract-net driver writes
the task to the ledger with itself as the owner and calls for proposals right
away, then answers ``cnet.submitted``. Targets are taken in turn (so a batch of
submissions spreads its auctions over the nodes); a node that does not answer
within the attempt timeout, or that runs no driver, is skipped for the next one.
When no node takes the task, it is written open to the ledger directly
(``submit_open_task``) and the nodes' periodic scan picks it up, later.

Every attempt carries the same task id, and the driver's ``submit`` is
idempotent for an id whose record holds the same capability and input, so a
retry after a lost answer neither duplicates the task nor fails.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agents.contract_net.ledger import (
    ATTEMPTS_MAX,
    CAPABILITY_CHARS_MAX,
    INPUT_BYTES_MAX,
    TASK_ID_CHARS_MAX,
    LedgerError,
    TaskRecord,
)
from mesh.errors import MeshError

__all__ = [
    "SUBMIT",
    "SUBMIT_ANSWER",
    "SubmitAnswer",
    "SubmitTask",
    "submit_task",
]

SUBMIT = "cnet.submit"
SUBMIT_ANSWER = "cnet.submitted"
ERROR_CHARS_MAX = 512
"""Longest error text in an answer."""

_rotation = itertools.count()


class SubmitTask(BaseModel):
    """Ask a node to record a new task and auction it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    task_id: str = Field(min_length=1, max_length=TASK_ID_CHARS_MAX)
    capability: str = Field(min_length=1, max_length=CAPABILITY_CHARS_MAX)
    input: bytes = Field(max_length=INPUT_BYTES_MAX)
    """Canonical JSON bytes of the input object."""
    max_attempts: int = Field(ge=1, le=ATTEMPTS_MAX)


class SubmitAnswer(BaseModel):
    """The node's answer: ``ok`` once the task is in the ledger (and auctioned, if
    this node manages it); otherwise ``error`` says why and whether to try elsewhere."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    ok: bool
    task_id: str = Field(max_length=TASK_ID_CHARS_MAX)
    error: str = Field(default="", max_length=ERROR_CHARS_MAX)
    retry_elsewhere: bool = False
    """The node could not write the ledger now; another node (or later) may."""


async def submit_task(
    kv: Any,
    capability: str,
    task_input: Mapping[str, Any],
    *,
    task_id: str | None = None,
    max_attempts: int = 3,
    attempt_timeout_s: float = 2.0,
) -> TaskRecord:
    """Submit a task through a node of ``kv``'s cluster (see the module docstring);
    the open record as written.

    ``kv`` is a standalone ``KVClient`` (``KVClient.connect``). ``LedgerError``
    for a malformed task or an id already used for another task; ``MeshError``
    subclasses when neither a node nor the ledger could take it.
    """
    from agents.driver import encode_json, submit_open_task

    task_id = task_id or uuid.uuid4().hex
    request = SubmitTask(task_id=task_id, capability=capability,
                         input=encode_json(dict(task_input)), max_attempts=max_attempts)
    record = TaskRecord(task_id, capability, request.input, max_attempts=max_attempts)
    kv.node.registry.register(SUBMIT, SubmitTask)
    kv.node.registry.register(SUBMIT_ANSWER, SubmitAnswer)
    targets = list(kv.targets())
    start = next(_rotation)
    for offset in range(len(targets)):
        target = targets[(start + offset) % len(targets)]
        try:
            envelope = await kv.node.request(target, SUBMIT, request,
                                             timeout_s=attempt_timeout_s)
        except MeshError:
            continue
        answer = envelope.payloads[0] if envelope.payloads else None
        if not isinstance(answer, SubmitAnswer):
            continue
        if answer.ok:
            return record
        if not answer.retry_elsewhere:
            raise LedgerError(answer.error or f"task {task_id} was refused")
    return await submit_open_task(kv, capability, task_input, task_id=task_id,
                                  max_attempts=max_attempts)
