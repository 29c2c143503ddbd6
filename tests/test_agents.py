"""Agents, the demo agents and the agent host: tasks, limits, failures and gossip adverts."""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from agents.agent import Agent, AgentInputError
from agents.contract_net import Contractor, ContractorSettings
from agents.contract_net.messages import REASON_CHARS_MAX, CallForProposals, Propose, Refuse
from agents.demo import (
    DemoSettings,
    SleepAgent,
    SumAgent,
    WordCountAgent,
    demo_agents,
    parse_agents_spec,
)
from agents.host import (
    AgentHost,
    FailureCause,
    HostSettings,
    TaskDone,
    TaskFailure,
    advert_key,
    capabilities_of,
    estimator_for,
    parse_advert,
)
from agents.outcomes import Handoff, handoff_from_result
from consensus.core import Incoming
from consensus.gossip import ChangeKind
from mesh.config import NodeConfig
from mesh.errors import ConfigError, MeshError
from mesh.gossip_api import GossipSubscription
from mesh.identity import ClusterAuthority, Identity
from mesh.runtime import Node

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- helpers -------------------------------------------------------------------------


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for ``condition`` (state changed by other tasks), failing at the deadline."""
    with anyio.fail_after(timeout_s):
        while not condition():
            await anyio.sleep(0.005)


class Gate(Agent):
    """Holds every task until released; counts the tasks that entered."""

    def __init__(self, name: str = "gate", capabilities: tuple[str, ...] = ("gate",),
                 concurrency_max: int = 2) -> None:
        super().__init__(name, capabilities, concurrency_max=concurrency_max)
        self.entered = 0
        self.release = anyio.Event()

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        self.entered += 1
        await self.release.wait()
        return {"ok": True, "by": self.name}


class Scripted(Agent):
    """Returns or raises what it is given."""

    def __init__(self, behaviour: Callable[[Mapping[str, Any]], Any]) -> None:
        super().__init__("scripted", ["script"], concurrency_max=1)
        self.behaviour = behaviour

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.behaviour(task_input)
        return result


class FakeGossip:
    def __init__(self, fail: bool = False) -> None:
        self.values: dict[str, Any] = {}
        self.written: list[Any] = []
        self.deleted: list[str] = []
        self.fail = fail

    def set(self, key: str, value: Any) -> None:
        if self.fail:
            raise ValueError("value of 99999 bytes (msgpack) exceeds value_bytes_max (10)")
        self.values[key] = value
        self.written.append(value)

    def delete(self, key: str) -> bool:
        self.deleted.append(key)
        return self.values.pop(key, None) is not None


class FakeNode:
    def __init__(self, fail: bool = False) -> None:
        self.node_id = bytes(range(16))
        self.gossip = FakeGossip(fail)


FOUR = DemoSettings(concurrency_max=4)
"""Demo agents with four slots each, as some tests count them."""


def host_of(*agents: Agent, **settings: Any) -> AgentHost:
    return AgentHost(FakeNode(), agents, settings=HostSettings(**settings))


async def run(agent: Agent, task_input: Any, capability: str | None = None) -> dict[str, Any]:
    return await agent.handle(capability or agent.capabilities[0], task_input)


# -- demo agents ---------------------------------------------------------------------


async def test_wordcount_counts_whitespace_separated_words() -> None:
    agent = WordCountAgent()
    assert await run(agent, {"text": "hello  big\nworld\t!"}) == {"words": 4}
    assert await run(agent, {"text": ""}) == {"words": 0}


@pytest.mark.parametrize(
    ("task_input", "message"),
    [
        ({}, "lacks 'text'"),
        ({"text": 3}, "text must be a string, not int"),
        ({"text": "a", "lang": "en"}, r"unexpected input keys \['lang'\]"),
        ({"text": "a b c d e f"}, r"11 characters, more than text_chars_max \(10\)"),
        (["text"], "input must be an object, not list"),
    ],
)
async def test_wordcount_rejects_bad_input(task_input: Any, message: str) -> None:
    with pytest.raises(AgentInputError, match=message):
        await run(WordCountAgent(DemoSettings(text_chars_max=10)), task_input)


async def test_sum_is_exact_for_integers_and_correctly_rounded_for_floats() -> None:
    agent = SumAgent()
    assert await run(agent, {"numbers": [1, 2, 3]}) == {"sum": 6}
    assert await run(agent, {"numbers": []}) == {"sum": 0}
    assert await run(agent, {"numbers": [0.1] * 10}) == {"sum": 1.0}
    assert await run(agent, {"numbers": [2**62, 2**62 - 1]}) == {"sum": 2**63 - 1}
    assert await run(agent, {"numbers": [1, 0.5]}) == {"sum": 1.5}


@pytest.mark.parametrize(
    ("numbers", "message"),
    [
        ("1 2", "numbers must be a list, not str"),
        ([1, True], r"numbers\[1\] must be a number, not bool"),
        ([1, "2"], r"numbers\[1\] must be a number, not str"),
        ([math.nan], r"numbers\[0\] \(nan\) must be finite"),
        ([-math.inf], r"numbers\[0\] \(-inf\) must be finite"),
        ([2**63], r"numbers\[0\] is an integer beyond"),
        ([1, 2, 3, 4], r"4 numbers, more than numbers_max \(3\)"),
        ([2**62, 2**62], "the sum is an integer beyond"),
        ([1e308, 1e308], r"the sum \(inf\) must be finite"),
    ],
)
async def test_sum_rejects_bad_input(numbers: Any, message: str) -> None:
    with pytest.raises(AgentInputError, match=message):
        await run(SumAgent(DemoSettings(numbers_max=3)), {"numbers": numbers})


async def test_sleep_sleeps_and_reports() -> None:
    agent = SleepAgent()
    assert await run(agent, {"seconds": 0}) == {"slept": 0}
    started = time.monotonic()
    assert await run(agent, {"seconds": 0.02}) == {"slept": 0.02}
    assert time.monotonic() - started >= 0.02


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (-1, r"seconds \(-1\) must be from 0 to sleep_seconds_max \(1.0\)"),
        (1.5, r"seconds \(1.5\) must be from 0"),
        (math.nan, r"seconds \(nan\) must be finite"),
        ("1", "seconds must be a number, not str"),
        (False, "seconds must be a number, not bool"),
    ],
)
async def test_sleep_rejects_bad_input(seconds: Any, message: str) -> None:
    with pytest.raises(AgentInputError, match=message):
        await run(SleepAgent(DemoSettings(sleep_seconds_max=1.0)), {"seconds": seconds})


def test_sleep_estimates_the_requested_time_or_its_maximum() -> None:
    agent = SleepAgent(DemoSettings(sleep_seconds_max=3.0))
    estimate = agent.estimate("demo.sleep", {"seconds": 0.5})
    assert estimate is not None and estimate.duration_s == 0.5
    unknown = agent.estimate("demo.sleep", None)
    assert unknown is not None and unknown.duration_s == 3.0
    invalid = agent.estimate("demo.sleep", {"seconds": -1})
    assert invalid is not None and invalid.duration_s == 3.0


def test_demo_agents_and_spec_parsing() -> None:
    names = [a.name for a in demo_agents()]
    assert names == ["demo.wordcount", "demo.sum", "demo.sleep"]
    assert [a.name for a in parse_agents_spec(" demo ")] == names
    assert [a.name for a in parse_agents_spec("agents.demo:demo_agents")] == names
    small = parse_agents_spec("demo", demo_settings=DemoSettings(concurrency_max=2,
                                                                 sleep_concurrency_max=3))
    assert [a.concurrency_max for a in small] == [2, 2, 3]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("demo,", "empty part"),
        ("llm", "'llm' is unknown"),
        ("demo,demo", "names agents twice"),
        ("no_such_module_xyz:make", "cannot import 'no_such_module_xyz'"),
        ("agents.demo:DEMO_SPEC", "has no callable 'DEMO_SPEC'"),
        ("agents.demo:DemoSettings", "returned DemoSettings, not agents"),
        (":make", "must be 'demo' or 'package.module:factory'"),
    ],
)
def test_bad_agent_specs_are_config_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_agents_spec(spec)


@pytest.mark.parametrize(
    ("name", "capabilities", "concurrency_max", "message"),
    [
        ("", ["x"], 1, "agent name '' must be a non-empty string"),
        ("a", [], 1, "offers no capability"),
        ("a", ["x", "x"], 1, "lists a capability twice"),
        ("a", [" x"], 1, "leading or trailing spaces"),
        ("a", ["x" * 129], 1, "more than 128"),
        ("a", ["x"], 0, r"concurrency_max \(0\) must be an integer from 1"),
        ("a", ["x"], True, r"concurrency_max \(True\)"),
    ],
)
def test_bad_agent_definitions_are_config_errors(
    name: str, capabilities: list[str], concurrency_max: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Gate(name, tuple(capabilities), concurrency_max)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sleep_seconds_max \(nan\)"):
        DemoSettings(sleep_seconds_max=math.nan)
    with pytest.raises(ConfigError, match=r"numbers_max \(0\)"):
        DemoSettings(numbers_max=0)
    with pytest.raises(ConfigError, match=r"task_timeout_s \(0\)"):
        HostSettings(task_timeout_s=0)
    with pytest.raises(ConfigError, match="agent names must be unique"):
        host_of(Gate(), Gate())


# -- the host: tasks, limits, failures -------------------------------------------------


async def test_host_runs_a_task_and_normalises_its_output() -> None:
    host = host_of(*demo_agents())
    assert await host.run_task("demo.sum", {"numbers": [1, 2]}) == TaskDone("demo.sum",
                                                                           {"sum": 3})
    tupled = host_of(Scripted(lambda _: {"pair": (1, 2)}))
    assert await tupled.run_task("script", {}) == TaskDone("scripted", {"pair": [1, 2]})
    assert host.counters["tasks_started"] == host.counters["tasks_done"] == 1


async def test_host_tracks_load_and_refuses_beyond_the_concurrency_limit() -> None:
    gate = Gate(concurrency_max=2)
    host = host_of(gate, WordCountAgent(FOUR), queue_per_slot=0)
    assert (host.load, host.limit, host.admit_limit) == (0, 2 + 4, 2 + 4)
    outcomes: list[Any] = []

    async def one() -> None:
        outcomes.append(await host.run_task("gate", {}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        tg.start_soon(one)
        await until(lambda: gate.entered == 2)
        assert host.load == 2 and host.running("gate") == 2
        busy = await host.run_task("gate", {})
        assert busy == TaskFailure(FailureCause.BUSY, "every agent offering 'gate' is at its "
                                   "concurrency limit and its queue is full")
        # Another capability still has room.
        assert await host.run_task("demo.wordcount", {"text": "a b"}) == TaskDone(
            "demo.wordcount", {"words": 2})
        gate.release.set()
    assert outcomes == [TaskDone("gate", {"ok": True, "by": "gate"})] * 2
    assert host.load == 0 and host.counters["failed_busy"] == 1
    assert host.counters["tasks_started"] == 3


async def test_tasks_beyond_the_slots_wait_in_a_bounded_queue() -> None:
    gate = Gate(concurrency_max=1)
    host = host_of(gate, queue_per_slot=1)
    assert host.admit_limit == 2
    outcomes: list[Any] = []

    async def one() -> None:
        outcomes.append(await host.run_task("gate", {}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(one)
        await until(lambda: gate.entered == 1)
        tg.start_soon(one)  # waits for the slot
        await until(lambda: host.counters["tasks_queued"] == 1)
        busy = await host.run_task("gate", {})  # slot and queue place taken
        assert busy.cause is FailureCause.BUSY  # type: ignore[union-attr]
        gate.release.set()  # the first ends, the waiting one takes the slot
    assert outcomes == [TaskDone("gate", {"ok": True, "by": "gate"})] * 2
    assert gate.entered == 2 and host.load == 0
    assert host.counters["tasks_started"] == 2 and host.counters["failed_busy"] == 1


async def test_a_task_waiting_for_a_slot_times_out() -> None:
    gate = Gate(concurrency_max=1)
    host = host_of(gate, queue_per_slot=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.run_task, "gate", {})
        await until(lambda: gate.entered == 1)
        waited = await host.run_task("gate", {}, timeout_s=0.05)
        assert waited == TaskFailure(FailureCause.TIMEOUT, "no gate slot came free within 0.05 s")
        gate.release.set()
    assert gate.entered == 1


async def test_host_picks_the_agent_with_most_free_slots() -> None:
    small, large = Gate("small", ("gate",), 1), Gate("large", ("gate",), 2)
    host = host_of(small, large)
    assert host.pick("gate") is large
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.run_task, "gate", {})
        await until(lambda: large.entered == 1)
        assert host.pick("gate") is small  # tie at one free slot: the first listed
        tg.start_soon(host.run_task, "gate", {})
        await until(lambda: small.entered == 1)
        assert host.pick("gate") is large
        tg.start_soon(host.run_task, "gate", {})
        await until(lambda: large.entered == 2)
        assert host.pick("gate") is None and host.load == 3
        small.release.set()
        large.release.set()
    assert host.load == 0


def _raise(exc: Exception) -> Callable[[Mapping[str, Any]], Any]:
    def behaviour(_: Mapping[str, Any]) -> Any:
        raise exc

    return behaviour


@pytest.mark.parametrize(
    ("behaviour", "cause", "reason"),
    [
        (_raise(AgentInputError("text must be a string")), FailureCause.BAD_INPUT,
         "text must be a string"),
        (_raise(RuntimeError("boom")), FailureCause.AGENT_ERROR, "RuntimeError: boom"),
        (_raise(KeyError("text")), FailureCause.AGENT_ERROR, "KeyError: 'text'"),
        (lambda _: [1, 2], FailureCause.BAD_OUTPUT,
         "result must be a JSON object with string keys, not list"),
        (lambda _: {1: "a"}, FailureCause.BAD_OUTPUT, "result must be a JSON object"),
        (lambda _: {"x": math.nan}, FailureCause.BAD_OUTPUT, "result is not JSON"),
        (lambda _: {"x": object()}, FailureCause.BAD_OUTPUT, "result is not JSON"),
        (lambda _: {"x": "y" * 100}, FailureCause.BAD_OUTPUT,
         r"exceeds result_bytes_max \(64\)"),
    ],
)
async def test_agent_faults_become_task_failures(
    behaviour: Callable[[Mapping[str, Any]], Any], cause: FailureCause, reason: str
) -> None:
    host = host_of(Scripted(behaviour), result_bytes_max=64)
    outcome = await host.run_task("script", {"text": 1})
    assert isinstance(outcome, TaskFailure)
    assert (outcome.cause, outcome.agent) == (cause, "scripted")
    assert re.search(reason, outcome.reason), outcome.reason
    assert host.counters[f"failed_{cause.value}"] == 1 and host.counters["tasks_done"] == 0
    assert host.load == 0


async def test_bad_input_reaches_the_caller_as_a_failure_with_the_agents_reason() -> None:
    host = host_of(*demo_agents())
    outcome = await host.run_task("demo.sum", {"numbers": [1, math.inf]})
    assert outcome == TaskFailure(FailureCause.BAD_INPUT,
                                  "demo.sum: numbers[1] (inf) must be finite", "demo.sum")
    not_an_object = await host.run_task("demo.sum", [1, 2])  # type: ignore[arg-type]
    assert isinstance(not_an_object, TaskFailure)
    assert not_an_object.cause is FailureCause.BAD_INPUT
    assert not_an_object.reason == "task input must be an object, not list"
    unknown = await host.run_task("demo.translate", {})
    assert unknown == TaskFailure(FailureCause.NO_CAPABILITY, "no agent offers 'demo.translate'")
    assert host.counters["failed_bad_input"] == 2
    assert host.counters["failed_no_capability"] == 1


async def test_long_reasons_are_clipped_to_fit_a_failure_message() -> None:
    host = host_of(Scripted(_raise(AgentInputError("x" * 1000))))
    outcome = await host.run_task("script", {})
    assert isinstance(outcome, TaskFailure)
    assert len(outcome.reason) == REASON_CHARS_MAX and outcome.reason.endswith("...")


async def test_a_task_over_its_timeout_fails_and_frees_its_slot() -> None:
    host = host_of(SleepAgent(), task_timeout_s=0.05)
    started = time.monotonic()
    outcome = await host.run_task("demo.sleep", {"seconds": 5})
    assert outcome == TaskFailure(FailureCause.TIMEOUT, "demo.sleep ran longer than 0.05 s",
                                  "demo.sleep")
    shorter = await host.run_task("demo.sleep", {"seconds": 5}, timeout_s=0.01)
    assert isinstance(shorter, TaskFailure) and "0.01 s" in shorter.reason
    # A caller cannot extend the host's limit.
    longer = await host.run_task("demo.sleep", {"seconds": 5}, timeout_s=100)
    assert isinstance(longer, TaskFailure) and "0.05 s" in longer.reason
    assert time.monotonic() - started < 2.0
    assert host.counters["failed_timeout"] == 3 and host.load == 0


async def test_cancelling_a_task_propagates_and_frees_its_slot() -> None:
    gate = Gate()
    host = host_of(gate)
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.run_task, "gate", {})
            await until(lambda: gate.entered == 1)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert host.load == 0 and host.counters["tasks_done"] == 0


# -- bids ----------------------------------------------------------------------------


def _cfp(capability: str, task_id: str = "t1") -> CallForProposals:
    return CallForProposals(task_id=task_id, epoch=1, capability=capability, bid_window_ms=100)


async def test_the_estimator_quotes_an_able_agent_and_has_room_says_whether_it_is_free() -> None:
    gate = Gate(concurrency_max=1)
    host = host_of(gate, SleepAgent(DemoSettings(sleep_seconds_max=2.0)), queue_per_slot=0)
    estimator = estimator_for(host)
    quote = estimator(_cfp("demo.sleep"))
    assert quote is not None and quote.duration_s == 2.0
    assert estimator(_cfp("demo.nothing")) is None
    assert not host.has_room({}, "demo.nothing")
    assert estimator(_cfp("gate")) is not None
    assert host.has_room({}, "gate")
    assert not host.has_room({"gate": 1}, "gate")  # one slot, promised already
    assert host.has_room({"gate": 1}, "demo.sleep")  # another agent's slots
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.run_task, "gate", {})
        await until(lambda: gate.entered == 1)
        assert estimator(_cfp("gate")) is not None  # a quote; room is has_room's call
        gate.release.set()


def test_has_room_counts_each_agents_slots_and_shared_capabilities() -> None:
    both = Gate(name="both", capabilities=["x", "y"], concurrency_max=2)
    only_x = Gate(name="only-x", capabilities=["x"], concurrency_max=1)
    host = host_of(both, only_x, queue_per_slot=0)
    assert host.has_room({"x": 2}, "y")  # x fills only-x first, then one slot of both
    assert not host.has_room({"x": 3}, "y")
    assert not host.has_room({"x": 2, "y": 1}, "x")
    assert host.has_room({"y": 1}, "x") and not host.has_room({"y": 1, "x": 2}, "y")
    assert host.has_room({"z": 5}, "x")  # held tasks of no capability here take no slot
    queued = host_of(both, only_x, queue_per_slot=1)  # twice the places
    assert queued.has_room({"x": 3, "y": 2}, "x") and not queued.has_room({"x": 4, "y": 2}, "x")


def test_a_contractor_bids_only_for_the_hosts_capabilities() -> None:
    host = host_of(*demo_agents())
    manager = bytes(16)
    contractor = Contractor(
        node_id=bytes(range(16)), capabilities=host.capabilities, estimator=estimator_for(host),
        settings=ContractorSettings(tasks_running_max=host.limit),
    )
    contractor.step(Incoming(manager, "cnet.cfp", _cfp("demo.sum", "a")))
    contractor.step(Incoming(manager, "cnet.cfp", _cfp("demo.translate", "b")))
    (bid, refusal) = [out.payloads[0] for out in contractor.take_outbox()]
    assert isinstance(bid, Propose) and bid.task_id == "a" and bid.duration_s == 0.01
    assert isinstance(refusal, Refuse) and refusal.reason == "no capability demo.translate"


async def test_a_raising_estimate_declines_the_bid_and_is_counted() -> None:
    class Broken(Gate):
        def estimate(self, capability: str, task_input: Mapping[str, Any] | None) -> Any:
            raise RuntimeError("estimator bug")

    host = host_of(Broken())
    assert host.estimate("gate") is None
    assert host.counters["estimate_errors"] == 1


# -- adverts -------------------------------------------------------------------------


@asynccontextmanager
async def advertising(host: AgentHost) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(host.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def test_the_advert_follows_the_load_and_coalesces_bursts() -> None:
    gate = Gate(concurrency_max=3)
    node = FakeNode()
    host = AgentHost(node, [gate, WordCountAgent(FOUR)],
                     settings=HostSettings(publish_interval_s=0.3))
    key = advert_key(node.node_id)
    here = node.node_id.hex()
    idle = {"capabilities": ["agent:demo.wordcount", f"agent:demo.wordcount@{here}",
                             "agent:gate", f"agent:gate@{here}", "demo.wordcount", "gate"],
            "load": 0, "limit": 7,
            "agents": ["gate", "demo.wordcount"]}
    async with advertising(host), anyio.create_task_group() as tg:
        await until(lambda: host.counters["publications"] == 1)
        assert node.gossip.values[key] == idle
        tg.start_soon(host.run_task, "gate", {})
        for _ in range(10):  # twenty changes of load inside one publish interval
            await host.run_task("demo.wordcount", {"text": "a"})
        await until(lambda: node.gossip.values[key]["load"] == 1)
        assert node.gossip.written == [idle, {**idle, "load": 1}]
        gate.release.set()
        await until(lambda: node.gossip.values[key]["load"] == 0)
        assert host.counters["publications"] == 3
    assert node.gossip.deleted == [key] and key not in node.gossip.values


async def test_an_advert_gossip_refuses_is_counted_and_the_host_keeps_going() -> None:
    node = FakeNode(fail=True)
    host = AgentHost(node, demo_agents(), settings=HostSettings(publish_interval_s=0.01))
    async with advertising(host):
        await until(lambda: host.counters["publish_errors"] >= 1)
        assert await host.run_task("demo.sum", {"numbers": [2]}) == TaskDone("demo.sum",
                                                                              {"sum": 2})
        await until(lambda: host.counters["publish_errors"] >= 2)
    assert host.counters["publications"] == 0 and node.gossip.deleted == []


async def test_a_host_advertises_from_one_run_at_a_time() -> None:
    host = host_of(*demo_agents())
    async with advertising(host):
        await until(lambda: host.counters["publications"] == 1)
        with pytest.raises(MeshError, match="already advertising"):
            await host.run()


def test_capabilities_of_lists_advertisers_least_loaded_first_and_counts_malformed() -> None:
    def key(n: int) -> str:
        return advert_key(bytes([n]) * 16)

    def advert(load: int, limit: int, caps: Any = ("demo.sum",)) -> dict[str, Any]:
        return {"capabilities": list(caps), "load": load, "limit": limit, "agents": ["a"]}

    items = [
        (key(1), advert(3, 4)),
        (key(2), advert(0, 4, ["demo.sum", "demo.sleep"])),
        (key(3), advert(4, 4)),
        (key(4), advert(1, 4, ["demo.sleep"])),
        (key(5), advert(1, 2)),
        ("node/" + "00" * 16, {"name": "x"}),  # not an advert: ignored, not counted
        ("agents/xyz", advert(0, 1)),
        ("agents/" + "zz" * 16, advert(0, 1)),
        (key(6), "not a mapping"),
        (key(7), advert(-1, 4)),
        (key(8), {**advert(0, 4), "load": True}),
        (key(9), advert(0, 4, [""])),
        (key(10), {**advert(0, 4), "capabilities": "demo.sum"}),
        (key(11), {"capabilities": ["demo.sum"], "load": 0, "agents": []}),
    ]
    listing = capabilities_of(items, "demo.sum")
    assert listing.node_ids == [bytes([n]) * 16 for n in (2, 5, 1, 3)]
    assert listing.malformed == 8
    assert [a.free for a in listing.nodes] == [4, 1, 1, 0]
    free = capabilities_of(items, "demo.sum", free_only=True)
    assert free.node_ids == [bytes([n]) * 16 for n in (2, 5, 1)]
    assert capabilities_of(items, "demo.sleep").node_ids == [bytes([2]) * 16, bytes([4]) * 16]
    host = host_of(*demo_agents())
    parsed = parse_advert(advert_key(bytes(range(16))), host.advert())
    assert parsed is not None and parsed.capabilities == tuple(host.capabilities)


# -- over real nodes -----------------------------------------------------------------

AUTHORITY = ClusterAuthority(Identity.generate())


def make_node(name: str, seeds: list[str] | None = None) -> Node:
    identity = Identity.generate()
    certificate = AUTHORITY.issue(name=name, public_key=identity.public_key, roles=["node"],
                                  not_after=int(time.time()) + 3600)
    return Node(config=NodeConfig(name=name, seeds=seeds or []), identity=identity,
                certificate=certificate, authority_public_key=AUTHORITY.public_key)


async def next_advert(changes: GossipSubscription, key: str,
                      condition: Callable[[Any], bool]) -> Any:
    """The first change of ``key`` whose value meets ``condition``; fails after 10 s."""
    with anyio.fail_after(10):
        async for change in changes:
            if change.key == key and condition(change):
                return change.value
    raise AssertionError("subscription closed")


async def test_another_node_sees_the_capabilities_and_load_through_gossip() -> None:
    first = make_node("first")
    async with first.running():
        assert first.address is not None
        second = make_node("second", seeds=[first.address])
        async with second.running():
            gate = Gate("gate", ("demo.hold",), concurrency_max=1)
            host = AgentHost(first, [*demo_agents(), gate],
                             settings=HostSettings(publish_interval_s=0.05))
            key = advert_key(first.node_id)
            async with second.gossip.subscribe("agents/") as changes:
                async with advertising(host), anyio.create_task_group() as tg:
                    seen = await next_advert(changes, key, lambda c: c.value is not None)
                    assert seen == host.advert() and seen["load"] == 0
                    listing = capabilities_of(second.gossip.items("agents/"), "demo.hold")
                    assert listing.node_ids == [first.node_id] and listing.malformed == 0
                    assert capabilities_of(second.gossip.items("agents/"), "x").nodes == ()

                    tg.start_soon(host.run_task, "demo.hold", {})
                    await next_advert(changes, key, lambda c: c.value and c.value["load"] == 1)
                    listing = capabilities_of(second.gossip.items("agents/"), "demo.hold",
                                              free_only=True)
                    assert listing.nodes[0].load == 1 and listing.nodes[0].free == host.limit - 1
                    gate.release.set()
                    await next_advert(changes, key, lambda c: c.value and c.value["load"] == 0)
                # The host stopped: its advert is withdrawn everywhere.
                await next_advert(changes, key, lambda c: c.kind is ChangeKind.DELETED)
                assert second.gossip.get(key) is None


async def test_an_agent_takes_tasks_by_its_name_and_hands_cases_on() -> None:
    class Triage(Agent):
        async def handle(self, capability: str, task_input: Mapping[str, Any]) -> Any:
            if task_input.get("kind") == "bill":
                return Handoff.to("billing", "@refunds", context={"seen_by": capability})
            return {"capability": capability}

    node = FakeNode()
    host = AgentHost(node, [Triage("triage", ["support.triage"])])
    assert "agent:triage" in host.capabilities
    pinned = f"agent:triage@{node.node_id.hex()}"
    assert pinned in host.capabilities and host.has_room({}, pinned)
    assert not host.has_room({}, "agent:triage@" + "00" * 16)
    by_name = await host.run_task("agent:triage", {})
    assert isinstance(by_name, TaskDone) and by_name.output == {"capability": "support.triage"}
    handed = await host.run_task("support.triage", {"kind": "bill"})
    assert isinstance(handed, TaskDone)
    handoff = handoff_from_result(handed.output)
    assert handoff is not None and [t.label for t in handoff.targets] == ["billing", "@refunds"]
    assert handoff.context == {"seen_by": "support.triage"}
    assert host.counters["handoffs"] == 1
    assert host.has_room({}, "agent:triage") and not host.has_room({}, "agent:nobody")
