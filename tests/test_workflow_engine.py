"""The workflow engine's patterns, replay and approvals, with in-memory fakes.

Real processes and the Raft-backed checkpoints are tested in
``test_workflow_processes.py``; here every pattern's logic is checked quickly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest

from agents.model_agent import ModelAgent
from agents.models.offline import ScriptedModel, reply
from agents.outcomes import Handoff, handoff_to_result
from agents.workflow.engine import (
    DONE,
    FAILED,
    REJECTED,
    GateDecision,
    GateRequest,
    WorkflowEngine,
)
from agents.workflow.spec import WorkflowSpec, load_workflow, parse_workflow
from mesh.errors import ConfigError
from workflow_fakes import AgentFailure, FakeRunner, MemoryCheckpoints

pytestmark = pytest.mark.timeout(30)


def spec(steps: list[dict[str, Any]], **extra: Any) -> WorkflowSpec:
    return parse_workflow({"name": "test", "steps": steps, **extra})


def run(workflow: WorkflowSpec, runner: FakeRunner,
        checkpoints: MemoryCheckpoints | None = None, workflow_id: str = "wf1") -> Any:
    engine = WorkflowEngine(workflow_id, workflow, runner, checkpoints or MemoryCheckpoints())
    return anyio.run(engine.run)


def upper(task: Mapping[str, Any]) -> dict[str, Any]:
    return {"text": str(task.get("text", task.get("input", ""))).upper()}


def two_turns(transcript: list[dict[str, Any]]) -> bool:
    """A chat predicate, imported by name."""
    return len(transcript) >= 2


def join_names(branches: list[dict[str, Any]]) -> str:
    """A custom aggregator, imported by name."""
    return "+".join(b["name"] for b in branches if b["state"] == DONE)


# ------------------------------------------------------------------ sequential


def test_sequential_steps_transform_inputs_and_outputs() -> None:
    runner = FakeRunner({
        "up": upper,
        "count": lambda task: {"words": len(str(task["text"]).split()), "echo": task["text"]},
    })
    workflow = spec([
        {"pattern": "sequential", "name": "prep", "steps": [
            {"name": "shout", "target": "up", "input": {"text": "$input.text"}},
            {"name": "words", "target": "count", "input": {"text": "{previous.text}!"},
             "output": "$result.words"},
        ]},
    ], input={"text": "a b c"}, output="$prep")
    outcome = run(workflow, runner)
    assert (outcome.state, outcome.result) == (DONE, 3)
    assert runner.inputs["wf1/prep/words"] == {"text": "A B C!"}


def test_a_missing_template_name_fails_the_step_with_its_name() -> None:
    outcome = run(spec([{"name": "s", "target": "up", "input": {"x": "$nothing.here"}}]),
                  FakeRunner({"up": upper}))
    assert outcome.state == FAILED and "$nothing is not known" in outcome.error


# ------------------------------------------------------------------ concurrent


def three_branches(**options: Any) -> WorkflowSpec:
    return spec([{"pattern": "concurrent", "name": "research", **options, "branches": [
        {"name": "a", "target": "ok", "input": {"text": "a"}},
        {"name": "b", "target": "ok", "input": {"text": "b"}},
        {"name": "c", "target": "bad", "input": {"text": "c"}},
    ]}])


def failing(task: Mapping[str, Any]) -> Any:
    raise AgentFailure("no luck")


def test_concurrent_merges_and_applies_the_failure_policy() -> None:
    agents = {"ok": upper, "bad": failing}
    outcome = run(three_branches(failure="any"), FakeRunner(agents))
    assert outcome.state == DONE
    assert outcome.result == {"a": {"text": "A"}, "b": {"text": "B"}}
    assert run(three_branches(failure="quorum:2", aggregator="list"),
               FakeRunner(agents)).result == [{"text": "A"}, {"text": "B"}]
    refused = run(three_branches(failure="all"), FakeRunner(agents))
    assert refused.state == FAILED and "2 of 3 branches succeeded, 3 needed" in refused.error
    assert "c: no luck" in refused.error
    custom = run(three_branches(failure="any", aggregator="test_workflow_engine:join_names"),
                 FakeRunner(agents))
    assert custom.result == "a+b"


def test_a_branch_past_the_deadline_is_given_up_and_cancelled() -> None:
    runner = FakeRunner({"ok": upper, "bad": upper})
    runner.block("bad")  # never released
    outcome = run(three_branches(failure="any", deadline_s=0.3), runner)
    assert outcome.state == DONE and set(outcome.result) == {"a", "b"}
    assert runner.cancelled == ["wf1/research/c"]


# ------------------------------------------------------------------ resume


def test_a_resumed_workflow_never_reruns_a_checkpointed_step() -> None:
    agents = {"up": upper, "count": lambda task: {"n": len(task["text"])}}
    workflow = spec([
        {"name": "one", "target": "up", "input": {"text": "$input.text"}},
        {"name": "two", "target": "up", "input": {"text": "{one.text} again"}},
        {"name": "three", "target": "count", "input": {"text": "$two.text"}},
    ], input={"text": "go"})
    undisturbed = run(workflow, FakeRunner(agents))

    checkpoints = MemoryCheckpoints()
    first = FakeRunner(agents)
    first.block("count")  # the orchestrator "dies" while step three is in flight

    async def crash() -> None:
        engine = WorkflowEngine("wf1", workflow, first, checkpoints)
        async with anyio.create_task_group() as group:
            group.start_soon(engine.run)
            await first.started_event("count").wait()
            group.cancel_scope.cancel()

    anyio.run(crash)
    assert checkpoints.records["two"].state == DONE
    second = FakeRunner(agents)
    resumed = run(workflow, second, checkpoints)
    assert resumed == undisturbed
    assert second.runs == {"wf1/three": 1}, "only the step in flight runs again"


# ------------------------------------------------------------------ group chat


def speaker(name: str, done_at: int | None = None) -> Any:
    def talk(task: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": f"{name} on turn {task['turn']}", "done": task["turn"] == done_at}
    return talk


def test_round_robin_chat_ends_when_a_speaker_is_done() -> None:
    runner = FakeRunner({"critic": speaker("critic"), "editor": speaker("editor", done_at=4)})
    outcome = run(spec([{"pattern": "group_chat", "name": "review", "input": "draft",
                         "participants": ["critic", "editor"], "max_turns": 10}]), runner)
    chat = outcome.result
    assert [t["speaker"] for t in chat["transcript"]] == ["critic", "editor"] * 2
    assert chat["stopped"] == "editor said it is done"
    assert all(s["chosen_by"] == "round_robin" for s in chat["selections"])


def test_a_predicate_that_cannot_be_imported_fails_the_chat_step_by_name() -> None:
    checkpoints = MemoryCheckpoints()
    outcome = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a"],
                         "until": "no_such_module:stop"}]), FakeRunner({"a": speaker("a")}),
                  checkpoints)
    assert outcome.state == FAILED and "cannot import no_such_module" in outcome.error
    assert checkpoints.records["c"].state == FAILED
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a"],
                      "until": "test_workflow_engine:two_turns"}]),
               FakeRunner({"a": speaker("a")})).result
    assert chat["turns"] == 2 and "test_workflow_engine:two_turns said stop" in chat["stopped"]


def test_chat_stops_on_text_or_max_turns() -> None:
    runner = FakeRunner({"a": speaker("a"), "b": lambda t: {"text": "APPROVED"}})
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a", "b"],
                      "until_contains": "APPROVED"}]), runner).result
    assert chat["turns"] == 2 and "contains 'APPROVED'" in chat["stopped"]
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a"],
                      "max_turns": 3}]), runner).result
    assert chat["turns"] == 3 and chat["stopped"] == "max_turns (3) reached"


def test_an_orchestrator_chooses_speakers_and_every_choice_is_recorded() -> None:
    def orchestrate(task: Mapping[str, Any]) -> dict[str, Any]:
        if task["turn"] == 2:
            return {"next": "stranger", "why": "confused"}
        return {"next": "b", "why": f"b knows best at turn {task['turn']}"}

    runner = FakeRunner({"a": speaker("a"), "b": speaker("b"), "boss": orchestrate})
    checkpoints = MemoryCheckpoints()
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a", "b"],
                      "speaker": "orchestrator", "selector": "boss", "max_turns": 3}]),
               runner, checkpoints).result
    assert [s["speaker"] for s in chat["selections"]] == ["b", "a", "b"]
    assert chat["selections"][0] == {"turn": 1, "speaker": "b", "chosen_by": "orchestrator:boss",
                                     "why": "b knows best at turn 1"}
    assert "chose 'stranger', not a participant" in chat["selections"][1]["why"]
    assert checkpoints.records["c/turn-1"].meta["chosen_by"] == "orchestrator:boss"


def test_a_model_driven_selector_chooses_the_speakers() -> None:
    def choose(messages: Any, tools: Any) -> Any:
        task = json.loads(messages[-1].content)["input"]
        spoken = [turn["speaker"] for turn in task["transcript"]]
        pick = "b" if spoken.count("b") < 2 else "a"
        return reply(json.dumps({"next": pick, "why": f"b has spoken {spoken.count('b')} times"}))

    selector = ModelAgent("selector", ["chat.select"], model=ScriptedModel(choose),
                          output="json")
    runner = FakeRunner({"a": speaker("a"), "b": speaker("b"),
                         "chat.select": lambda task: selector.handle("chat.select", task)})
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["a", "b"],
                      "speaker": "model", "selector": "chat.select", "max_turns": 3}]),
               runner).result
    assert [s["speaker"] for s in chat["selections"]] == ["b", "b", "a"]
    assert chat["selections"][2]["chosen_by"] == "model:chat.select"
    assert chat["selections"][2]["why"] == "b has spoken 2 times"


def test_members_join_and_leave_while_the_chat_runs() -> None:
    def host(task: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": "welcome", "invite": ["guest"]} if task["turn"] == 1 else {"text": "hi"}

    def guest(task: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": "bye", "leave": True}

    runner = FakeRunner({"host": host, "guest": guest, "late": speaker("late")})
    chat = run(spec([{"pattern": "group_chat", "name": "c", "participants": ["host"],
                      "max_turns": 5, "membership": [{"at_turn": 4, "join": "late"}]}]),
               runner).result
    assert [t["speaker"] for t in chat["transcript"]] == ["host", "guest", "host", "late",
                                                          "host"]
    assert chat["membership"] == [{"turn": 1, "join": "guest", "by": "host"},
                                  {"turn": 2, "leave": "guest", "by": "guest"},
                                  {"turn": 4, "join": "late", "by": "scheduled"}]


# ------------------------------------------------------------------ handoff


def hands_to(*targets: str, **context: Any) -> Any:
    return lambda task: handoff_to_result(Handoff.to(*targets, context=context,
                                                     reason="not mine"))


def test_triage_hands_off_and_context_is_carried() -> None:
    runner = FakeRunner({
        "triage": hands_to("billing", customer="ada"),
        "billing": lambda task: {"text": f"refund for {task['context']['customer']}"},
    })
    result = run(spec([{"pattern": "handoff", "name": "support", "start": "triage",
                        "input": "my bill"}]), runner).result
    assert result["result"] == {"text": "refund for ada"}
    assert result["chains"][0]["path"] == ["triage", "billing"]


def test_a_parallel_handoff_joins_every_answer() -> None:
    runner = FakeRunner({
        "triage": hands_to("billing", "@tech"),
        "billing": lambda task: {"text": "billing answer"},
        "@tech": hands_to("escalation"),
        "escalation": lambda task: {"text": "escalated answer"},
    })
    result = run(spec([{"pattern": "handoff", "name": "s", "start": "triage"}]), runner).result
    assert result["result"] == [{"text": "billing answer"}, {"text": "escalated answer"}]
    assert [c["path"] for c in result["chains"]] == [
        ["triage", "billing"], ["triage", "@tech", "escalation"]]


def test_handoff_cycles_and_budgets_stop_with_a_reason() -> None:
    runner = FakeRunner({"a": hands_to("b"), "b": hands_to("a")})
    outcome = run(spec([{"pattern": "handoff", "name": "s", "start": "a"}]), runner)
    assert outcome.state == FAILED and "cycle: a -> b -> a" in outcome.error
    runner = FakeRunner({f"n{i}": hands_to(f"n{i + 1}") for i in range(20)})
    outcome = run(spec([{"pattern": "handoff", "name": "s", "start": "n0", "max_hops": 4}]),
                  runner)
    assert outcome.state == FAILED and "hop budget of 4 spent" in outcome.error
    assert len(runner.runs) == 4


# ------------------------------------------------------------------ magentic


def planner(script: list[dict[str, Any]]) -> Any:
    def manage(task: Mapping[str, Any]) -> dict[str, Any]:
        turn = len([p for p in task["ledger"]["progress"] if "step" in p])
        stalls = len([p for p in task["ledger"]["progress"] if "stall" in p])
        return script[min(turn + stalls, len(script) - 1)] | {
            "plan": ["collect", "write"], "replanning": task["replan"]}
    return manage


def test_magentic_manager_assigns_work_until_done() -> None:
    runner = FakeRunner({
        "manager": planner([
            {"next": {"worker": "collector", "instruction": "collect facts"}},
            {"next": {"worker": "writer", "instruction": "write it up"}},
            {"done": True, "answer": "report"},
        ]),
        "collector": lambda task: {"facts": 3},
        "writer": lambda task: {"text": "a report"},
    })
    result = run(spec([{"pattern": "magentic", "name": "m", "manager": "manager",
                        "workers": ["collector", "writer"]}]), runner).result
    assert result["answer"] == "report" and result["worker_steps"] == 2
    assert [p["worker"] for p in result["ledger"]["progress"]] == ["collector", "writer"]


def test_magentic_stalls_replan_then_stop_and_budgets_hold() -> None:
    runner = FakeRunner({
        "manager": planner([{"next": {"worker": "nobody", "instruction": "x"}}]),
        "w": upper,
    })
    result = run(spec([{"pattern": "magentic", "name": "m", "manager": "manager",
                        "workers": ["w"], "stall_max": 2, "replans_max": 1}]), runner).result
    assert result["answer"] is None and "after 1 re-plans" in result["stopped"]
    assert result["ledger"]["replans"] == 1

    def busy(task: Mapping[str, Any]) -> dict[str, Any]:
        step = len([p for p in task["ledger"]["progress"] if "step" in p])
        return {"next": {"worker": "w", "instruction": f"part {step}"}}

    runner = FakeRunner({"manager": busy, "w": upper})
    result = run(spec([{"pattern": "magentic", "name": "m", "manager": "manager",
                        "workers": ["w"], "step_budget": 3}]), runner).result
    assert result["stopped"] == "step budget of 3 spent" and result["worker_steps"] == 3


# ------------------------------------------------------------------ approvals


def gated(**options: Any) -> WorkflowSpec:
    return spec([
        {"name": "draft", "target": "up", "input": {"text": "plan"}},
        {"pattern": "approval", "name": "sign", "prompt": "ship it?", **options},
        {"name": "after", "target": "up", "input": {"text": "shipped"}},
    ])


async def answer_when_asked(runner: FakeRunner, gate_id: str, decision: GateDecision) -> None:
    while gate_id not in runner.gates:
        await anyio.sleep(0.01)
    runner.answer(gate_id, decision)


def run_with_answer(workflow: WorkflowSpec, gate_id: str, decision: GateDecision) -> Any:
    runner = FakeRunner({"up": upper})

    async def main() -> Any:
        engine = WorkflowEngine("wf1", workflow, runner, MemoryCheckpoints())
        async with anyio.create_task_group() as group:
            group.start_soon(answer_when_asked, runner, gate_id, decision)
            return await engine.run()

    return anyio.run(main), runner


def test_an_approval_pauses_until_answered() -> None:
    outcome, runner = run_with_answer(gated(), "wf1/sign", GateDecision(True, "ada", "fine"))
    assert outcome.state == DONE and outcome.result == {"text": "SHIPPED"}
    assert runner.gates["wf1/sign"].shown == {"text": "PLAN"}
    outcome, runner = run_with_answer(gated(), "wf1/sign", GateDecision(False, "bob", "no"))
    assert outcome.state == REJECTED and "no" in outcome.error
    assert "wf1/after" not in runner.runs
    outcome, _ = run_with_answer(gated(on_reject="continue"), "wf1/sign",
                                 GateDecision(False, "bob", "no"))
    assert outcome.state == DONE


def test_an_unanswered_approval_times_out_as_configured() -> None:
    rejected = run(gated(timeout_s=0.1), FakeRunner({"up": upper}))
    assert rejected.state == REJECTED and "no answer in time" in rejected.error
    approved = run(gated(timeout_s=0.1, on_timeout="approve"), FakeRunner({"up": upper}))
    assert approved.state == DONE
    outcome, runner = run_with_answer(
        gated(timeout_s=0.1, on_timeout="escalate", escalate_to="managers"),
        "wf1/sign/escalated", GateDecision(True, "boss", "ok"))
    assert outcome.state == DONE
    assert runner.gates["wf1/sign/escalated"].approvers == "managers"
    assert runner.decisions["wf1/sign"].by == "timeout"


def test_parallel_approvals_are_answered_each_by_its_own_id_once() -> None:
    workflow = spec([{"pattern": "concurrent", "name": "both", "branches": [
        {"pattern": "approval", "name": "legal", "prompt": "legal ok?"},
        {"pattern": "approval", "name": "money", "prompt": "budget ok?"},
    ]}])
    runner = FakeRunner({})

    async def main() -> Any:
        engine = WorkflowEngine("wf1", workflow, runner, MemoryCheckpoints())
        async with anyio.create_task_group() as group:
            group.start_soon(answer_when_asked, runner, "wf1/both/money",
                             GateDecision(True, "cfo", "budget fine"))
            group.start_soon(answer_when_asked, runner, "wf1/both/legal",
                             GateDecision(True, "counsel", "legal fine"))
            return await engine.run()

    outcome = anyio.run(main)
    assert outcome.state == DONE
    assert outcome.result["legal"]["by"] == "counsel"
    assert outcome.result["money"]["by"] == "cfo"
    # A second answer does not fire again: the first stands.
    assert runner.answer("wf1/both/legal", GateDecision(False, "x", "late")).by == "counsel"


# ------------------------------------------------------------------ files


def test_workflow_files_load_and_bad_ones_say_where(tmp_path: Path) -> None:
    path = tmp_path / "flow.toml"
    path.write_text('name = "brief"\n[input]\ntopic = "tea"\n\n'
                    '[[steps]]\nname = "research"\ntarget = "research.market"\n'
                    'input = { topic = "$input.topic" }\n')
    workflow = load_workflow(path)
    assert workflow.steps[0].name == "research" and workflow.input == {"topic": "tea"}
    path.write_text('name = "x"\n[[steps]]\nname = "a"\npattern = "group_chat"\n'
                    'participants = ["p"]\nspeaker = "model"\n')
    with pytest.raises(ConfigError, match="needs a selector"):
        load_workflow(path)
    with pytest.raises(ConfigError, match="two steps are named"):
        spec([{"name": "a", "target": "x"}, {"name": "a", "target": "y"}])
    path.write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_workflow(path)


# ------------------------------------------------------------------ vote


def voters(*choices: str) -> dict[str, Any]:
    return {f"v{i}": (lambda task, c=c, i=i: {"choice": c, "reason": f"v{i} likes {c}"})
            for i, c in enumerate(choices)}


def vote_step(count: int, **options: Any) -> WorkflowSpec:
    return spec([{"pattern": "vote", "name": "ballot", "question": "ship it?",
                  "options": ["ship", "wait"], "voters": [f"v{i}" for i in range(count)],
                  "input": "", **options}])


def test_a_supermajority_decides_the_vote() -> None:
    outcome = run(vote_step(3, rule="supermajority"), FakeRunner(voters("ship", "ship",
                                                                        "ship")))
    assert outcome.state == DONE
    assert (outcome.result["decided"], outcome.result["choice"], outcome.result["by"]) == (
        True, "ship", "vote")


def test_an_undecided_vote_escalates_to_a_person() -> None:
    workflow = vote_step(3, rule="supermajority")
    outcome, runner = run_with_answer(workflow, "wf1/ballot", GateDecision(True, "ada", ""))
    # run_with_answer's runner has no voters: every voter is absent, nothing decided.
    assert outcome.state == DONE and outcome.result["by"] == "person:ada"
    assert outcome.result["choice"] == "ship" and outcome.result["escalated"]
    assert "Approve 'ship'" in runner.gates["wf1/ballot"].prompt

    runner = FakeRunner(voters("ship", "wait", "wait", "ship", "ship"))
    runner.agents["v4"] = failing  # absent: 3 of 5 is not two thirds

    async def main() -> Any:
        engine = WorkflowEngine("wf1", vote_step(5, rule="supermajority"), runner,
                                MemoryCheckpoints())
        async with anyio.create_task_group() as group:
            group.start_soon(answer_when_asked, runner, "wf1/ballot",
                             GateDecision(False, "bob", "not yet"))
            return await engine.run()

    refused = anyio.run(main)
    assert refused.state == FAILED and "bob rejected 'ship'" in refused.error
    assert runner.gates["wf1/ballot"].shown["absent"] == ["v4"]


# ------------------------------------------------------------------ resolve


def test_contradictory_claims_are_settled_by_freshness_with_a_record() -> None:
    runner = FakeRunner({
        "old": lambda task: {"value": 10, "updated_at": 100.0},
        "new": lambda task: {"value": 12, "updated_at": 105.0},
    })
    outcome = run(spec([
        {"name": "a", "target": "old", "input": {}},
        {"name": "b", "target": "new", "input": {}},
        {"pattern": "resolve", "name": "price", "subject": "the price",
         "claims": {"a": "$a", "b": "$b"}, "strategy": "priority", "priority": "freshness"},
    ]), runner)
    assert outcome.state == DONE
    assert (outcome.result["decided_by"], outcome.result["value"]) == ("priority", 12)
    assert "b" in outcome.result["why"]


def test_claimants_negotiate_in_rounds_and_one_concedes() -> None:
    def stubborn(task: Mapping[str, Any]) -> dict[str, Any]:
        return {"value": "red", "reason": "red is brand colour"}

    def flexible(task: Mapping[str, Any]) -> dict[str, Any]:
        if task["round"] >= 2:
            return {"value": "red", "concede": True, "reason": "fine, red"}
        return {"value": "blue", "reason": "blue tests better"}

    runner = FakeRunner({"s": stubborn, "f": flexible})
    outcome = run(spec([{"pattern": "resolve", "name": "colour", "subject": "logo colour",
                         "claims": {"design": "red", "marketing": "blue"},
                         "strategy": "negotiate",
                         "negotiators": {"design": "s", "marketing": "f"}}]), runner)
    assert outcome.state == DONE
    assert (outcome.result["decided_by"], outcome.result["value"]) == ("negotiation", "red")
    assert "wf1/colour/round-2/marketing" in runner.runs


def test_a_deadlocked_negotiation_goes_to_a_person() -> None:
    runner = FakeRunner({"s": lambda task: {"value": "red"}, "t": lambda task: {"value": "blue"}})

    async def main() -> Any:
        workflow = spec([{"pattern": "resolve", "name": "colour", "subject": "logo colour",
                          "claims": {"design": "red", "marketing": "blue"},
                          "strategy": "negotiate", "rounds_max": 2, "fallback": "person",
                          "negotiators": {"design": "s", "marketing": "t"}}])
        engine = WorkflowEngine("wf1", workflow, runner, MemoryCheckpoints())
        async with anyio.create_task_group() as group:
            group.start_soon(answer_when_asked, runner, "wf1/colour",
                             GateDecision(True, "ceo", "red it is"))
            return await engine.run()

    outcome = anyio.run(main)
    assert outcome.state == DONE
    assert (outcome.result["decided_by"], outcome.result["value"]) == ("person", "red")


def test_a_resumed_gate_keeps_the_deadline_it_was_opened_with() -> None:
    runner = FakeRunner({})
    # The gate was opened by an earlier orchestrator whose deadline has passed.
    runner.gates["wf1/ballot"] = GateRequest("wf1/ballot", "wf1", "ballot", "?", None, "",
                                             timeout_at=runner.now() - 1)
    outcome = run(vote_step(3, escalation_timeout_s=3600), runner)
    assert outcome.state == FAILED and "no answer in time" in outcome.error
    assert runner.decisions["wf1/ballot"].by == "timeout"
