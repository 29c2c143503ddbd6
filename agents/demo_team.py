"""A team of specialised offline agents, and the workflow the demo runs with them.

How this works
--------------
``--agents team`` hosts these agents on a node. Each is deterministic (its
answer depends only on its input) and takes a moment, as real work would, so
that a node can be killed while the workflow runs and the same result still
comes out:

- ``research.market``, ``research.tech``, ``research.risk``: three researchers,
  each turning a topic into findings of its own angle;
- ``analysis``: an analyst driven by an offline model (``ScriptedModel``) that
  calls a tool to score the findings, then answers in JSON: the model-client
  path, tools included, with no network;
- ``summary``: a writer turning the analysis into a short brief;
- ``review.critic``, ``review.editor``: a review chat; the editor approves the
  draft once the critic has spoken twice;
- ``review.chair``: chooses who speaks next in the review, and says why;
- ``support.triage``, ``support.billing``, ``support.tech``,
  ``support.escalation``: a support desk for handoffs (triage hands a case to
  billing, to tech, or to both at once; billing escalates large refunds);
- ``plan.manager``, ``plan.collector``, ``plan.drafter``: a manager that plans
  and assigns work to two workers (the magentic pattern);
- the coordination agents of ``agents.demo_coordination`` (shared context and
  events).

Every node hosts the whole team; each agent's bids carry a small cost drawn per
node process, so the auctions spread the work over the nodes.

``DEMO_WORKFLOW`` runs them: concurrent research, a sequential analysis and
summary, a review group chat chaired by ``review.chair``, and an approval gate
before the result. ``agentmesh demo`` (``agents.demo_command``) runs it on a
local mesh and answers the gate itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from agents.agent import Agent, AgentInputError, Estimate
from agents.demo_coordination import coordination_agents
from agents.model_agent import AgentLimits, ModelAgent
from agents.models.base import ChatMessage, ModelReply
from agents.models.offline import ScriptedModel, call, reply
from agents.outcomes import Handoff
from agents.tools import tool
from agents.workflow.spec import WorkflowSpec, parse_workflow

__all__ = ["DEMO_WORKFLOW", "TEAM_SPEC", "team_agents"]

TEAM_SPEC = "team"
"""The ``--agents`` spec naming this team."""
WORK_S = 0.6
"""How long each agent works on a task (seconds): long enough to kill a node mid-way."""

_ANGLES = {
    "research.market": ("market", ["demand grows", "prices fall", "installers compete",
                                    "subsidies shift", "buyers compare"]),
    "research.tech": ("technology", ["cells last longer", "inverters merge", "software "
                                     "schedules charging", "safety standards tighten",
                                     "recycling matures"]),
    "research.risk": ("risk", ["supply is concentrated", "tariffs change", "fire codes "
                               "vary", "warranties differ", "grid rules lag"]),
}


def _pick(seed: str, options: Sequence[str], count: int) -> list[str]:
    """``count`` of ``options`` chosen by hashing ``seed``: the same every time."""
    digest = hashlib.sha256(seed.encode()).digest()
    order = sorted(range(len(options)), key=lambda i: (digest[i % len(digest)], i))
    return [options[i] for i in order[:count]]


def _topic(task_input: Mapping[str, Any]) -> str:
    topic = task_input.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise AgentInputError("the input needs a non-empty 'topic'")
    return topic.strip()


class TeamAgent(Agent):
    """A team member: quotes a cost drawn once per node process, so that equal
    agents on different nodes do not all lose to the same node."""

    def __init__(self, name: str, capabilities: list[str], concurrency_max: int = 2) -> None:
        super().__init__(name, capabilities, concurrency_max=concurrency_max)
        self._cost = 1.0 + random.Random(f"{os.getpid()}/{name}").random()

    def estimate(self, capability: str, task_input: Mapping[str, Any] | None) -> Estimate:
        return Estimate(cost=self._cost, duration_s=WORK_S, confidence=1.0)


class Researcher(TeamAgent):
    """Findings on a topic from one angle (market, technology or risk)."""

    def __init__(self, capability: str) -> None:
        super().__init__(f"researcher-{_ANGLES[capability][0]}", [capability])
        self._angle, self._facts = _ANGLES[capability]

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        topic = _topic(task_input)
        await anyio.sleep(WORK_S)
        facts = _pick(f"{self._angle}/{topic}", self._facts, 3)
        return {"angle": self._angle, "facts": facts,
                "text": f"{self._angle.capitalize()} view of {topic}: " + "; ".join(facts) + "."}


@tool
def score_findings(findings: dict[str, Any]) -> dict[str, int]:
    """How many facts each angle found, and in all."""
    counts = {angle: len(found.get("facts", [])) if isinstance(found, dict) else 0
              for angle, found in findings.items()}
    return {**counts, "total": sum(counts.values())}


def _analyst_model(messages: Sequence[ChatMessage],
                   tools: Sequence[Mapping[str, Any]]) -> ModelReply:
    """An offline model: first asks for the score, then writes the analysis as JSON."""
    task = json.loads(next(m.content for m in messages if m.role == "user" and m.content))
    findings = task["input"].get("findings", {})
    scored = [m for m in messages if m.role == "tool"]
    if not scored:
        return call("score_findings", findings=findings)
    score = json.loads(scored[-1].content or "{}")
    strongest = max((a for a in findings if a != "total"),
                    key=lambda a: (score.get(a, 0), a), default="none")
    points = [fact for found in findings.values() if isinstance(found, dict)
              for fact in found.get("facts", [])[:1]]
    return reply(json.dumps({
        "text": f"{score.get('total', 0)} findings; the {strongest} angle is the strongest. "
                "Key points: " + "; ".join(points) + ".",
        "score": score}))


class Writer(TeamAgent):
    """A short brief from an analysis."""

    def __init__(self) -> None:
        super().__init__("writer", ["summary"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        analysis = task_input.get("analysis")
        if not isinstance(analysis, dict) or not isinstance(analysis.get("text"), str):
            raise AgentInputError("the input needs 'analysis' with a 'text'")
        await anyio.sleep(WORK_S)
        return {"text": "Brief: " + analysis["text"]}


class Critic(TeamAgent):
    """Reviews the draft: one remark per turn."""

    _REMARKS = ("name the sources", "shorten the opening", "state the main risk first")

    def __init__(self) -> None:
        super().__init__("critic", ["review.critic"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        await anyio.sleep(WORK_S / 2)
        spoken = sum(1 for turn in task_input.get("transcript", [])
                     if turn.get("speaker") == "review.critic")
        return {"text": f"Critic: {self._REMARKS[spoken % len(self._REMARKS)]}."}


class Editor(TeamAgent):
    """Answers the critic; approves once the critic has spoken twice."""

    def __init__(self) -> None:
        super().__init__("editor", ["review.editor"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        await anyio.sleep(WORK_S / 2)
        remarks = [turn["text"] for turn in task_input.get("transcript", [])
                   if turn.get("speaker") == "review.critic"]
        if len(remarks) >= 2:
            return {"text": f"Editor: applied {len(remarks)} remarks. APPROVED", "done": True}
        return {"text": f"Editor: applied {len(remarks)} remark(s); another look, please."}


class Chair(TeamAgent):
    """Chooses the next speaker of the review, and says why."""

    def __init__(self) -> None:
        super().__init__("chair", ["review.chair"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        transcript = task_input.get("transcript", [])
        last = transcript[-1]["speaker"] if transcript else None
        if last == "review.critic":
            return {"next": "review.editor", "why": "the critic spoke: the editor answers"}
        return {"next": "review.critic", "why": "the draft changed: the critic reviews it"}


def team_agents() -> list[Agent]:
    """The whole team, as ``--agents team`` hosts it on a node."""
    analyst = ModelAgent(
        "analyst", ["analysis"], model=ScriptedModel(_analyst_model),
        instructions="Analyse research findings: score them with the tool, then answer in "
                     "JSON with a 'text' and the 'score'.",
        description="turns findings into an analysis", tools=[score_findings], output="json",
        limits=AgentLimits(max_tool_calls=4, max_model_calls=4, timeout_s=30.0),
        concurrency_max=2)
    return [*(Researcher(c) for c in _ANGLES), analyst, Writer(), Critic(), Editor(),
            Chair(), Triage(), Billing(), TechSupport(), Escalation(), PlanManager(),
            Collector(), Drafter(), *coordination_agents()]


class Triage(TeamAgent):
    """Routes a support case: billing, tech, or both at once (a parallel handoff)."""

    def __init__(self) -> None:
        super().__init__("triage", ["support.triage"])

    async def handle(self, capability: str,
                     task_input: Mapping[str, Any]) -> dict[str, Any] | Handoff:
        text = str(task_input.get("case", "")).lower()
        targets = [target for words, target in (
            (("refund", "bill", "charge"), "support.billing"),
            (("error", "crash", "broken"), "support.tech")) if any(w in text for w in words)]
        if not targets:
            return {"text": "Triage: answered directly, nothing to route."}
        amount = next((int(w) for w in text.replace("$", " ").split() if w.isdigit()), 0)
        return Handoff.to(*targets, context={"amount": amount, "case": text},
                          reason="routed by keywords")


class Billing(TeamAgent):
    """Refunds up to 1000; larger ones go to escalation (an escalation chain)."""

    def __init__(self) -> None:
        super().__init__("billing", ["support.billing"])

    async def handle(self, capability: str,
                     task_input: Mapping[str, Any]) -> dict[str, Any] | Handoff:
        amount = int(task_input.get("context", {}).get("amount", 0))
        if amount > 1000:
            return Handoff.to("support.escalation", context={"amount": amount},
                              reason="refund above 1000")
        return {"text": f"Billing: refunded {amount}."}


class TechSupport(TeamAgent):
    def __init__(self) -> None:
        super().__init__("tech-support", ["support.tech"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": "Tech: reproduced the error and shipped a fix."}


class Escalation(TeamAgent):
    def __init__(self) -> None:
        super().__init__("escalation", ["support.escalation"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        amount = int(task_input.get("context", {}).get("amount", 0))
        return {"text": f"Escalation: a senior approved the refund of {amount}."}


class PlanManager(TeamAgent):
    """Plans collect-then-draft and assigns each step; done once both are in."""

    def __init__(self) -> None:
        super().__init__("plan-manager", ["plan.manager"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        ledger = task_input.get("ledger", {})
        done = {step["worker"]: step["result"] for step in ledger.get("progress", [])
                if "worker" in step}
        plan = ["plan.collector: collect facts", "plan.drafter: draft the answer"]
        if "plan.collector" not in done:
            return {"plan": plan, "next": {"worker": "plan.collector",
                                           "instruction": "collect facts"}}
        if "plan.drafter" not in done:
            return {"plan": plan, "next": {"worker": "plan.drafter",
                                           "instruction": "draft the answer"}}
        return {"plan": plan, "done": True, "answer": done["plan.drafter"]["text"]}


class Collector(TeamAgent):
    def __init__(self) -> None:
        super().__init__("collector", ["plan.collector"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        task = task_input.get("task", {})
        topic = task.get("topic", "the task") if isinstance(task, Mapping) else str(task)
        return {"facts": _pick(f"collect/{topic}", _ANGLES["research.market"][1], 2)}


class Drafter(TeamAgent):
    def __init__(self) -> None:
        super().__init__("drafter", ["plan.drafter"])

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        facts = [fact for step in task_input.get("ledger", {}).get("progress", [])
                 for fact in (step.get("result") or {}).get("facts", [])]
        return {"text": "Draft: " + "; ".join(facts) + "."}


DEMO_WORKFLOW: WorkflowSpec = parse_workflow({
    "name": "market brief",
    "description": "Research a topic from three angles at once, analyse and summarise it, "
                   "review it in a chaired chat, and ask for approval before publishing.",
    "input": {"topic": "home solar batteries"},
    "steps": [
        {"pattern": "concurrent", "name": "research", "failure": "quorum:2",
         "deadline_s": 120, "branches": [
             {"name": "market", "target": "research.market", "input": {"topic": "$input.topic"}},
             {"name": "tech", "target": "research.tech", "input": {"topic": "$input.topic"}},
             {"name": "risk", "target": "research.risk", "input": {"topic": "$input.topic"}},
         ]},
        {"pattern": "sequential", "name": "write", "steps": [
            {"name": "analyse", "target": "analysis", "input": {"findings": "$research"}},
            {"name": "summarise", "target": "summary", "input": {"analysis": "$analyse"}},
        ]},
        {"pattern": "group_chat", "name": "review", "input": {"draft": "$write.text"},
         "participants": ["review.critic", "review.editor"], "speaker": "orchestrator",
         "selector": "review.chair", "max_turns": 8},
        {"pattern": "approval", "name": "publish", "prompt": "Publish this brief?",
         "show": {"brief": "$write.text", "review": "$review.final"}, "timeout_s": 300},
    ],
    "output": {"brief": "$write.text", "review": "$review.final",
               "approved_by": "$publish.by"},
})
"""The demo's workflow (see the module docstring)."""
