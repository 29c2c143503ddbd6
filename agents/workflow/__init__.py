"""Multi-agent workflows across the mesh: patterns, durable checkpoints, approvals.

``spec`` says what a workflow is (a TOML file or Python objects), ``engine``
runs its patterns from checkpoints, ``store`` keeps workflows, checkpoints and
approval gates in the Raft KV store, ``service`` orchestrates and resumes them on
the nodes, ``client`` and ``cli`` are the Python and command-line ways in.
"""

from agents.workflow.client import (
    approve,
    pending_approvals,
    show_workflow,
    submit_workflow,
    wait_workflow,
)
from agents.workflow.spec import WorkflowSpec, load_workflow, parse_workflow

__all__ = [
    "WorkflowSpec",
    "approve",
    "load_workflow",
    "parse_workflow",
    "pending_approvals",
    "show_workflow",
    "submit_workflow",
    "wait_workflow",
]
