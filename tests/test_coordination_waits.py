"""Deadlock prevention: the wait-for graph, refused waits, bounded waits."""

from __future__ import annotations

import json
from itertools import pairwise

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.coordination.waits import (
    DeadlockError,
    WaitError,
    WaitForGraph,
    WaitGraphFull,
    WaitRegistry,
    WaitTimeout,
    bounded_wait,
)
from mesh.errors import ConfigError, MeshError, Overloaded

pytestmark = pytest.mark.timeout(30)

DEADLINE_S = 10.0
"""How long a test waits for a task it started to reach a point (never reached when it
passes: events, not sleeps)."""


# ------------------------------------------------------------------ the graph


def test_find_cycle_finds_a_three_task_cycle_from_its_smallest_id() -> None:
    graph = WaitForGraph.from_edges([("task-c", "task-a"), ("task-a", "task-b"),
                                     ("task-b", "task-c"), ("task-d", "task-a")])
    assert graph.find_cycle() == ["task-a", "task-b", "task-c"]
    graph.remove_wait("task-b", "task-c")
    assert graph.find_cycle() is None


def test_find_cycle_is_deterministic_among_several_cycles() -> None:
    edges = [("z", "y"), ("y", "z"), ("m", "n"), ("n", "m"), ("b", "m")]
    assert WaitForGraph.from_edges(edges).find_cycle() == ["m", "n"]
    assert WaitForGraph.from_edges(reversed(edges)).find_cycle() == ["m", "n"]
    assert WaitForGraph.from_edges([("a", "a")]).find_cycle() == ["a"]


def test_would_deadlock_names_the_cycle_starting_at_the_waiter() -> None:
    graph = WaitForGraph.from_edges([("task-b", "task-c"), ("task-c", "task-a")])
    assert graph.would_deadlock("task-a", "task-b") == ["task-a", "task-b", "task-c"]
    assert graph.would_deadlock("task-b", "task-a") is None
    assert graph.would_deadlock("task-x", "task-x") == ["task-x"]
    assert graph.would_deadlock("task-a", "task-unknown") is None
    assert len(graph) == 2  # asking adds nothing


def test_edges_round_trip_through_json() -> None:
    graph = WaitForGraph()
    for waiter, holder in [("b", "c"), ("a", "b"), ("a", "b"), ("a", "c")]:
        graph.add_wait(waiter, holder)
    assert graph.edges() == [("a", "b"), ("a", "b"), ("a", "c"), ("b", "c")]
    rebuilt = WaitForGraph.from_edges(json.loads(json.dumps(graph.edges())))
    assert rebuilt.edges() == graph.edges() and len(rebuilt) == 4
    assert rebuilt.nodes() == ["a", "b", "c"]
    assert rebuilt.holders_of("a") == ["b", "c"] and rebuilt.waiters_for("c") == ["a", "b"]


def test_a_repeated_wait_must_be_removed_as_often() -> None:
    graph = WaitForGraph()
    graph.add_wait("a", "b")
    graph.add_wait("a", "b")
    assert graph.remove_wait("a", "b") and graph.edges() == [("a", "b")]
    assert graph.remove_wait("a", "b") and graph.edges() == [] and graph.nodes() == []
    assert not graph.remove_wait("a", "b")


def test_clear_forgets_every_wait_of_and_for_a_node() -> None:
    graph = WaitForGraph.from_edges([("a", "b"), ("b", "c"), ("c", "b"), ("d", "b"),
                                     ("d", "b"), ("c", "e")])
    assert graph.clear("b") == 5
    assert graph.edges() == [("c", "e")] and graph.nodes() == ["c", "e"] and len(graph) == 1
    assert graph.clear("nobody") == 0


def test_the_graph_is_bounded() -> None:
    graph = WaitForGraph(nodes_max=3, edges_max=3)
    graph.add_wait("a", "b")
    graph.add_wait("b", "c")
    with pytest.raises(WaitGraphFull, match=r"would pass nodes_max \(3\)"):
        graph.add_wait("c", "d")
    graph.add_wait("c", "a")
    with pytest.raises(WaitGraphFull, match=r"would pass edges_max \(3\)"):
        graph.add_wait("a", "c")
    assert issubclass(WaitGraphFull, Overloaded) and len(graph) == 3
    with pytest.raises(ConfigError, match=r"nodes_max \(0\)"):
        WaitForGraph(nodes_max=0)
    with pytest.raises(WaitError, match="waiter id"):
        graph.add_wait("", "a")
    with pytest.raises(WaitError, match="pair"):
        WaitForGraph.from_edges([("a", "b", "c")])


def reaches(edges: set[tuple[str, str]], start: str, goal: str) -> bool:
    """Brute force: is there a path of one or more edges from start to goal?"""
    seen: set[str] = set()
    frontier = {start}
    while frontier:
        frontier = {h for w, h in edges if w in frontier} - seen
        if goal in frontier:
            return True
        seen |= frontier
    return False


def is_cycle(edges: set[tuple[str, str]], cycle: list[str]) -> bool:
    return bool(cycle) and all(edge in edges for edge in pairwise([*cycle, cycle[0]]))


NODES = ["a", "b", "c", "d", "e"]
op_st = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("remove"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("clear"), st.sampled_from(NODES), st.just("")))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op_st, max_size=30), probe=st.tuples(st.sampled_from(NODES),
                                                         st.sampled_from(NODES)))
def test_find_cycle_agrees_with_brute_force(ops: list[tuple[str, str, str]],
                                            probe: tuple[str, str]) -> None:
    graph = WaitForGraph()
    counts: dict[tuple[str, str], int] = {}
    for op, x, y in ops:
        if op == "add":
            graph.add_wait(x, y)
            counts[(x, y)] = counts.get((x, y), 0) + 1
        elif op == "remove":
            assert graph.remove_wait(x, y) == ((x, y) in counts)
            if (x, y) in counts:
                counts[(x, y)] -= 1
                if not counts[(x, y)]:
                    del counts[(x, y)]
        else:
            graph.clear(x)
            counts = {e: n for e, n in counts.items() if x not in e}
        edges = set(counts)
        cycle = graph.find_cycle()
        has_cycle = any(reaches(edges, node, node) for node in NODES)
        assert (cycle is not None) == has_cycle
        if cycle is not None:
            assert is_cycle(edges, cycle) and cycle[0] == min(cycle)
            assert len(set(cycle)) == len(cycle)
    assert sorted(graph.edges()) == sorted(e for e, n in counts.items() for _ in range(n))
    waiter, holder = probe
    closing = graph.would_deadlock(waiter, holder)
    edges = set(counts)
    assert (closing is not None) == (waiter == holder or reaches(edges, holder, waiter))
    if closing is not None:
        assert closing[0] == waiter and is_cycle(edges | {(waiter, holder)}, closing)


# ------------------------------------------------------------------ the registry


def test_a_wait_that_would_close_a_three_task_cycle_is_refused() -> None:
    registry = WaitRegistry()
    release = anyio.Event()
    inside = {"task-b": anyio.Event(), "task-c": anyio.Event()}
    caught: list[DeadlockError] = []

    async def wait(waiter: str, holder: str) -> None:
        async with registry.waiting(waiter, holder, timeout_s=DEADLINE_S):
            inside[waiter].set()
            await release.wait()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "task-b", "task-c")
            tg.start_soon(wait, "task-c", "task-a")
            with anyio.fail_after(DEADLINE_S):
                for event in inside.values():
                    await event.wait()
            assert registry.graph.edges() == [("task-b", "task-c"), ("task-c", "task-a")]
            with pytest.raises(DeadlockError) as refused:
                async with registry.waiting("task-a", "task-b", timeout_s=DEADLINE_S):
                    raise AssertionError("the wait closing the cycle must not start")
            caught.append(refused.value)
            # Refused at once: the edge was never added, the others still wait.
            assert registry.graph.find_cycle() is None and len(registry.graph) == 2
            release.set()
        assert registry.graph.edges() == []

    anyio.run(main)
    error = caught[0]
    assert error.cycle == ["task-a", "task-b", "task-c"] and error.victim == "task-a"
    assert str(error) == ("deadlock: task-a waits for task-b waits for task-c waits for "
                          "task-a; broken by refusing task-a's wait")
    assert registry.refused == 1 and isinstance(error, MeshError)


def test_waiting_on_oneself_is_a_deadlock() -> None:
    async def main() -> None:
        async with WaitRegistry().waiting("task-a", "task-a", timeout_s=1.0):
            raise AssertionError("unreachable")

    with pytest.raises(DeadlockError, match="task-a waits for task-a;"):
        anyio.run(main)


def test_the_wait_is_removed_on_exit_and_on_error() -> None:
    registry = WaitRegistry()

    async def main() -> None:
        async with registry.waiting("a", "b", timeout_s=DEADLINE_S):
            assert registry.graph.edges() == [("a", "b")]
        assert registry.graph.edges() == []
        with pytest.raises(KeyError):
            async with registry.waiting("a", "b", timeout_s=DEADLINE_S):
                raise KeyError("boom")
        assert registry.graph.edges() == []

    anyio.run(main)


def test_the_wait_is_removed_on_cancellation() -> None:
    registry = WaitRegistry()
    inside = anyio.Event()

    async def wait_forever() -> None:
        async with registry.waiting("a", "b", timeout_s=DEADLINE_S):
            inside.set()
            await anyio.Event().wait()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_forever)
            with anyio.fail_after(DEADLINE_S):
                await inside.wait()
            assert registry.graph.edges() == [("a", "b")]
            tg.cancel_scope.cancel()
        assert registry.graph.edges() == []
        assert registry.timed_out == 0  # a cancellation is not a timeout

    anyio.run(main)


def test_a_wait_past_its_timeout_raises_and_is_removed() -> None:
    registry = WaitRegistry()

    async def main() -> None:
        async with registry.waiting("a", "b", timeout_s=0.1):
            await anyio.Event().wait()

    with pytest.raises(WaitTimeout, match=r"gave up waiting for b \(waited for by a\) "
                                          r"after 0.1 s"):
        anyio.run(main)
    assert registry.graph.edges() == [] and registry.timed_out == 1


def test_an_error_in_the_block_is_not_taken_for_a_timeout() -> None:
    registry = WaitRegistry()

    async def main() -> None:
        async with registry.waiting("a", "b", timeout_s=DEADLINE_S):
            with anyio.fail_after(0.05):
                await anyio.Event().wait()

    with pytest.raises(TimeoutError):
        anyio.run(main)
    assert registry.timed_out == 0 and registry.graph.edges() == []


def test_a_full_graph_refuses_the_wait() -> None:
    registry = WaitRegistry(WaitForGraph(edges_max=1))

    async def main() -> None:
        async with registry.waiting("a", "b", timeout_s=DEADLINE_S):
            with pytest.raises(WaitGraphFull):
                async with registry.waiting("c", "d", timeout_s=DEADLINE_S):
                    raise AssertionError("unreachable")
            assert registry.graph.edges() == [("a", "b")]

    anyio.run(main)


# ------------------------------------------------------------------ bounded_wait


def test_bounded_wait_returns_once_the_event_is_set() -> None:
    async def main() -> None:
        event = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(bounded_wait, "the lease", event, DEADLINE_S)
            event.set()
        await bounded_wait("an event already set", event, 0.01)

    anyio.run(main)


def test_bounded_wait_times_out_naming_what_it_waited_for() -> None:
    async def main() -> None:
        await bounded_wait("the lease of task-b", anyio.Event(), 0.1)

    with pytest.raises(WaitTimeout) as timed_out:
        anyio.run(main)
    assert str(timed_out.value) == "gave up waiting for the lease of task-b after 0.1 s"
    assert (timed_out.value.what, timed_out.value.timeout_s) == ("the lease of task-b", 0.1)


def test_bounded_wait_polls_a_predicate() -> None:
    calls = []

    async def third_time() -> bool:
        calls.append(1)
        return len(calls) >= 3

    async def main() -> None:
        await bounded_wait("three calls", third_time, DEADLINE_S, poll_interval_s=0.001)
        await bounded_wait("a plain predicate", lambda: True, 0.1)
        with pytest.raises(WaitTimeout, match=r"gave up waiting for never after 0\.05 s"):
            await bounded_wait("never", lambda: False, 0.05, poll_interval_s=0.01)

    anyio.run(main)
    assert len(calls) == 3


def test_bounded_wait_checks_its_arguments() -> None:
    async def main(*args: object, **kwargs: object) -> None:
        await bounded_wait(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match=r"timeout_s \(0\)"):
        anyio.run(main, "x", anyio.Event(), 0)
    with pytest.raises(ConfigError, match="poll_interval_s"):
        anyio.run(lambda: main("x", lambda: True, 1.0, poll_interval_s=0))
    with pytest.raises(WaitError, match=r"expected an anyio\.Event or a predicate"):
        anyio.run(main, "x", 42, 1.0)
    with pytest.raises(WaitError, match="what a wait is for"):
        anyio.run(main, "", anyio.Event(), 1.0)
