"""The Python API for workflows on a running mesh: submit, wait, show, approve.

How this works: every call goes through a ``KVClient`` (``KVClient.connect(cluster
directory)`` or a node's own ``node.kv``) to the Raft store; nothing talks to a
particular node. ``submit_workflow`` records the workflow open; the nodes'
workflow services (``agents.workflow.service``) claim and run it. ``approve``
answers an approval gate exactly once. ``wait_workflow`` polls until the
workflow finished.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import anyio

from agents.workflow.engine import GateDecision
from agents.workflow.spec import WorkflowSpec
from agents.workflow.store import Gate, WorkflowRecord, WorkflowStore

__all__ = ["approve", "pending_approvals", "show_workflow", "submit_workflow",
           "wait_workflow"]

POLL_S = 0.2


async def submit_workflow(kv: Any, spec: WorkflowSpec, run_input: Mapping[str, Any] | None = None,
                          *, workflow_id: str | None = None) -> str:
    """Record ``spec`` to run on the mesh (with ``run_input`` over its own input); its id."""
    return await WorkflowStore(kv).submit(spec, run_input, workflow_id=workflow_id)


async def wait_workflow(kv: Any, workflow_id: str, timeout_s: float) -> WorkflowRecord:
    """The workflow once finished; ``TimeoutError`` after ``timeout_s``,
    ``LookupError`` for an unknown id."""
    store = WorkflowStore(kv)
    with anyio.fail_after(timeout_s):
        while True:
            record = await store.workflow(workflow_id)
            if record is None:
                raise LookupError(f"no workflow {workflow_id}")
            if record.final:
                return record
            await anyio.sleep(POLL_S)


async def show_workflow(kv: Any, workflow_id: str) -> dict[str, Any] | None:
    """The workflow and its steps (who ran each, where, when), or None."""
    return await WorkflowStore(kv).view(workflow_id)


async def approve(kv: Any, gate_id: str, *, approved: bool = True, comment: str = "",
                  by: str = "") -> GateDecision:
    """Answer the approval gate ``gate_id``; the decision that stands (an earlier
    answer wins and is returned). ``WorkflowError`` for an unknown gate."""
    return await WorkflowStore(kv).decide(
        gate_id, GateDecision(approved, by or "api", comment, time.time()))


async def pending_approvals(kv: Any) -> list[Gate]:
    """The gates waiting for a person."""
    return await WorkflowStore(kv).pending_gates()
