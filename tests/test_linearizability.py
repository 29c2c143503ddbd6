"""The linearizability checker: known-good and known-bad histories, properties, speed.

Histories are written as small text tables, one operation a line:

    CLIENT INVOKE COMPLETE OP KEY [ARGS...] -> RESULT...

``COMPLETE`` is ``?`` for an operation whose answer never came (then no result).
Tokens: ``-`` is None, ``yes``/``ok`` True, ``no``/``fail`` False, digits an int,
anything else a string; several result tokens form a tuple, so a get that saw
value ``a`` at version 1 is ``-> a 1`` and a successful cas is ``-> ok 2``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.linearizability import (
    DeleteVersioning,
    History,
    KVModel,
    Model,
    Operation,
    Outcome,
    RegisterModel,
    check,
)
from sim.linearizability.__main__ import main
from sim.linearizability.synth import ReferenceKV, SynthSettings, synthesize

REPO = Path(__file__).resolve().parent.parent


def _token(text: str) -> Any:
    named = {"-": None, "yes": True, "ok": True, "no": False, "fail": False}
    if text in named:
        return named[text]
    if text.lstrip("-").isdigit():
        return int(text)
    return text


def ops(table: str) -> list[Operation]:
    """Parse a history table (see the module docstring)."""
    found = []
    for raw in table.strip().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        left, _, right = line.partition("->")
        client, invoke, complete, op, key, *args = left.split()
        unknown = complete == "?"
        results = [_token(t) for t in right.split()]
        result = results[0] if len(results) == 1 else tuple(results)
        found.append(Operation(
            client, op, key, tuple(_token(a) for a in args), float(invoke),
            None if unknown else float(complete), None if unknown else result,
            Outcome.UNKNOWN if unknown else Outcome.OK))
    return found


# -- known-good histories -----------------------------------------------------------

GOOD = {
    "sequential": """
        c1 0 1 get x          -> - 0
        c1 2 3 put x a        -> 1
        c1 4 5 get x          -> a 1
        c1 6 7 cas x b 1      -> ok 2
        c1 8 9 cas x c 1      -> fail 2
        c1 10 11 delete x     -> yes
        c1 12 13 delete x     -> no
        c1 14 15 get x        -> - 3
        c1 16 17 put x d      -> 4
    """,
    "concurrent writes, reads pick either order": """
        c1 0 10 put x a       -> 2
        c2 1 9 put x b        -> 1
        c3 2 3 get x          -> b 1
        c4 4 5 get x          -> a 2
    """,
    "reads overlapping a write see old then new": """
        c1 0 10 put x a       -> 1
        c2 1 2 get x          -> - 0
        c3 3 4 get x          -> a 1
        c2 5 6 get x          -> a 1
    """,
    "concurrent reads may disagree while a write is in flight": """
        c1 0 10 put x a       -> 1
        c2 1 9 get x          -> a 1
        c3 2 8 get x          -> - 0
    """,
    "unknown write that took effect, observed later": """
        c1 0 ? put x a
        c2 1 2 get x          -> - 0
        c2 3 4 get x          -> a 1
        c2 5 6 put x b        -> 2
    """,
    "unknown write that never took effect": """
        c1 0 ? put x a
        c2 5 6 get x          -> - 0
        c2 7 8 put x b        -> 1
        c2 9 10 get x         -> b 1
    """,
    "unknown writes whose order only a later read reveals": """
        c1 0 ? put x a
        c2 1 ? put x b
        c3 20 21 get x        -> a 2
    """,
    "interchangeable unknown writes, some of which happened": """
        c1 0 ? put x a
        c2 1 ? put x b
        c3 2 ? put x c
        c4 3 ? delete x
        c5 10 11 get x        -> b 2
        c5 12 13 put x d      -> 5
    """,
    "unknown cas that succeeded and unknown delete that did not": """
        c1 0 1 put x a        -> 1
        c1 2 ? cas x b 1
        c2 3 ? delete y
        c2 4 5 get x          -> b 2
    """,
    "unknown read is ignored": """
        c1 0 ? get x
        c1 1 2 put x a        -> 1
    """,
    "cas race, exactly one wins": """
        c0 0 1 put x a        -> 1
        c1 2 5 cas x b 1      -> ok 2
        c2 3 6 cas x c 1      -> fail 2
        c3 7 8 get x          -> b 2
    """,
    "cas race, the later invoker wins": """
        c0 0 1 put x a        -> 1
        c1 2 6 cas x b 1      -> fail 2
        c2 3 5 cas x c 1      -> ok 2
        c3 7 8 get x          -> c 2
    """,
    "touching intervals count as concurrent": """
        c1 0 1 put x a        -> 1
        c2 1 2 get x          -> - 0
    """,
    "keys are independent": """
        c1 0 1 put x a        -> 1
        c1 2 3 put y b        -> 1
        c2 4 5 get x          -> a 1
        c2 4 5 get y          -> b 1
    """,
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_known_good_history_is_linearizable(name: str) -> None:
    result = check(ops(GOOD[name]))
    assert result.linearizable is True, result.explanation
    assert result.bad_key is None and result.failure is None


# -- known-bad histories --------------------------------------------------------------

BAD = {
    "stale read after a completed write": """
        c1 0 1 put x a        -> 1
        c1 2 3 put x b        -> 2
        c2 4 5 get x          -> a 1
    """,
    "lost acknowledged write": """
        c1 0 1 put x a        -> 1
        c2 2 3 put x b        -> 2
        c3 4 5 get x          -> a 1
        c3 6 7 put x c        -> 2
        c3 8 9 get x          -> c 2
    """,
    "two cas with the same expected version both succeed": """
        c0 0 1 put x a        -> 1
        c1 2 5 cas x b 1      -> ok 2
        c2 3 6 cas x c 1      -> ok 2
    """,
    "version goes backwards": """
        c1 0 1 put x a        -> 1
        c1 2 3 put x a        -> 2
        c2 4 5 get x          -> a 2
        c2 6 7 get x          -> a 1
    """,
    "read of a value never written": """
        c1 0 1 put x a        -> 1
        c2 2 3 get x          -> zzz 1
    """,
    "read sees a write that started after the read completed": """
        c2 0 1 get x          -> a 1
        c1 2 3 put x a        -> 1
    """,
    "read un-sees a write another read already saw": """
        c1 0 10 put x a       -> 1
        c2 1 2 get x          -> a 1
        c3 3 4 get x          -> - 0
    """,
    "put reports a version skipping one": """
        c1 0 1 put x a        -> 1
        c1 2 3 put x b        -> 3
    """,
    "delete of a missing key reported as existing": """
        c1 0 1 delete x       -> yes
    """,
    "failed cas reports a wrong current version": """
        c1 0 1 put x a        -> 1
        c1 2 3 cas x b 0      -> fail 0
    """,
    "an unknown write cannot explain two different versions": """
        c1 0 ? put x a
        c2 1 2 get x          -> a 1
        c2 3 4 get x          -> a 2
    """,
    "more versions than writes": """
        c1 0 ? put x a
        c2 1 ? put x b
        c3 2 ? put x c
        c5 10 11 get x        -> b 4
    """,
    "violation on one key among many good ones": """
        c1 0 1 put w a        -> 1
        c1 0 1 put x a        -> 1
        c1 0 1 put z a        -> 1
        c2 2 3 get w          -> a 1
        c2 2 3 get x          -> - 0
        c2 2 3 get z          -> a 1
    """,
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_known_bad_history_is_rejected(name: str) -> None:
    result = check(ops(BAD[name]))
    assert result.linearizable is False, result.explanation
    assert result.bad_key == "x"
    assert result.failure is not None and result.failure.key == "x"
    assert "not linearizable" in result.explanation


def test_stale_read_is_explained_for_humans() -> None:
    result = check(ops(BAD["stale read after a completed write"]))
    assert result.failure is not None
    print(result.explanation)
    assert [p.index for p in result.failure.prefix] == [0, 1]
    assert result.failure.blocked.index == 2
    assert "get('x') -> ('a', 1)" in result.explanation
    assert "'b' at version 2, where it would return ('b', 2)" in result.explanation


def test_a_boolean_does_not_pass_for_a_version() -> None:
    history = ops("c1 0 1 put x a -> yes")
    assert check(history).linearizable is False


# -- the delete versioning choice ----------------------------------------------------

DELETE_THEN_PUT_KEEP = """
    c1 0 1 put x a        -> 1
    c1 2 3 delete x       -> yes
    c1 4 5 get x          -> - 2
    c1 6 7 cas x b 2      -> ok 3
"""
DELETE_THEN_PUT_RESET = """
    c1 0 1 put x a        -> 1
    c1 2 3 delete x       -> yes
    c1 4 5 get x          -> - 0
    c1 6 7 cas x b 0      -> ok 1
"""


def test_delete_keeps_counting_by_default() -> None:
    assert check(ops(DELETE_THEN_PUT_KEEP)).linearizable is True
    assert check(ops(DELETE_THEN_PUT_RESET)).linearizable is False


def test_delete_can_reset_the_version() -> None:
    reset = KVModel(DeleteVersioning.RESET)
    assert check(ops(DELETE_THEN_PUT_RESET), reset).linearizable is True
    assert check(ops(DELETE_THEN_PUT_KEEP), reset).linearizable is False


# -- another model --------------------------------------------------------------------


def test_register_model() -> None:
    good = ops("""
        c1 0 10 write r a     -> -
        c2 1 2 read r         -> -
        c2 3 4 read r         -> a
        c3 5 6 cas r a b      -> yes
        c3 7 8 cas r a c      -> no
        c3 9 11 read r        -> b
    """)
    assert check(good, RegisterModel()).linearizable is True
    bad = ops("""
        c1 0 1 write r a      -> -
        c1 2 3 write r b      -> -
        c2 4 5 read r         -> a
    """)
    result = check(bad, RegisterModel())
    assert result.linearizable is False and result.bad_key == "r"


def test_the_model_refuses_operations_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="not 'incr'"):
        check(ops("c1 0 1 incr x -> 1"))
    with pytest.raises(ValueError, match="takes 2 argument"):
        check(ops("c1 0 1 cas x a -> ok 1"))
    with pytest.raises(ValueError, match="expect_version 'one' must be an int"):
        check(ops("c1 0 1 cas x a one -> ok 1"))


def test_many_unknown_writes_are_refuted_quickly() -> None:
    """Forty lost writes whose values nobody read, then a read no subset of them explains.

    Without merging unread values and applying identical unknown writes in
    invocation order, refuting this means trying all 2**40 subsets.
    """
    history = [Operation(f"c{i}", "put", "x", (f"v{i}",), float(i), None, None, Outcome.UNKNOWN)
               for i in range(40)]
    history.append(Operation("r", "get", "x", (), 100.0, 101.0, ("v7", 41)))
    started = time.monotonic()
    result = check(history, time_limit_s=10)
    assert result.linearizable is False
    assert time.monotonic() - started < 2


# -- the time limit ------------------------------------------------------------------


def _hard_register_history(writers: int = 22) -> list[Operation]:
    """Many concurrent writes, then a read of a value none wrote: exponential to refute."""
    history = [Operation(f"c{i}", "write", "r", (f"v{i}",), 0.0, 50.0, None)
               for i in range(writers)]
    history.append(Operation("reader", "read", "r", (), 60.0, 61.0, "never"))
    return history


def test_time_limit_gives_up_with_an_unknown_verdict() -> None:
    started = time.monotonic()
    result = check(_hard_register_history(), RegisterModel(), time_limit_s=0.2)
    assert time.monotonic() - started < 5
    assert result.linearizable is None and result.bad_key is None
    assert result.undecided_keys == ("r",)
    assert "time limit" in result.explanation


# -- the History recorder and its JSON form -------------------------------------------


def test_history_records_invocations_completions_and_unknowns() -> None:
    history = History(meta={"seed": 7})
    put = history.invoke("c1", "put", "x", (b"\x00blob",), 0.0)
    cas = history.invoke("c2", "cas", "x", ({"n": [1, 2]}, 1), 0.5)
    get = history.invoke("c3", "get", "x", (), 0.6)
    lost = history.invoke("c4", "delete", "x", (), 0.7)
    history.complete(put, 1, 1.0)
    history.complete(cas, (True, 2), 2.0)
    history.complete(get, [{"n": [1, 2]}, 2], 3.0)  # as a JSON client would hand it over
    history.unknown(lost)
    history.invoke("c5", "put", "x", ("late",), 4.0)  # still open: counts as unknown
    assert [op.unknown for op in history.operations] == [False, False, False, True, True]
    assert check(history).linearizable is True

    again = History.from_json(history.to_json())
    assert again.meta == {"seed": 7}
    assert again.operations[0].args == (b"\x00blob",)
    assert [op.unknown for op in again.operations] == [False, False, False, True, True]
    assert check(again).linearizable is True


def test_history_refuses_misuse() -> None:
    history = History()
    handle = history.invoke("c1", "get", "x", (), 5.0)
    with pytest.raises(ValueError, match="before its invoke time"):
        history.complete(handle, (None, 0), 4.0)
    history.complete(handle, (None, 0), 6.0)
    with pytest.raises(ValueError, match="already closed"):
        history.unknown(handle)
    with pytest.raises(ValueError, match="must be finite"):
        history.invoke("c1", "get", "x", (), float("nan"))
    with pytest.raises(ValueError, match="not an agentmesh history"):
        History.from_json(json.dumps({"format": "something else"}))


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad, hard = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "hard.json"
    History(ops(GOOD["cas race, exactly one wins"])).save(str(good))
    History(ops(BAD["stale read after a completed write"])).save(str(bad))
    History(_hard_register_history()).save(str(hard))
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    assert "where it would return" in capsys.readouterr().out
    assert main([str(hard), "--model", "register", "--time-limit", "0.1", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["linearizable"] is None
    assert main([str(tmp_path / "missing.json")]) == 3
    with pytest.raises(SystemExit) as exited:
        main([str(good), "--model", "nonsense"])
    assert exited.value.code == 3


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    History(ops(BAD["two cas with the same expected version both succeed"])).save(str(path))
    run = subprocess.run([sys.executable, "-m", "sim.linearizability", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 1, run.stderr
    assert "key 'x'" in run.stdout


# -- properties ----------------------------------------------------------------------

KEYS = ("a", "b", "c")
VALUES = ("x", "y", "z")  # few values, so that reads are ambiguous and the search must work
KINDS = ("get", "put", "cas", "delete")


@st.composite
def stretched_histories(draw: st.DrawFn, max_ops: int = 24, keys: tuple[str, ...] = KEYS,
                        ) -> tuple[list[Operation], DeleteVersioning]:
    """Run a random sequential program, then widen each operation around its instant.

    Operation ``i`` takes effect at ``10 * i``; its interval reaches up to 40
    either side, so it overlaps up to four neighbours each way. Some answers are
    lost (unknown outcome), and some unknown writes never happened at all.
    The program ends with a completed get, for the mutation property.
    """
    versioning = draw(st.sampled_from(DeleteVersioning))
    store = ReferenceKV(versioning)
    count = draw(st.integers(0, max_ops))
    history = []
    for i in range(count + 1):
        last = i == count
        kind = "get" if last else draw(st.sampled_from(KINDS))
        key = draw(st.sampled_from(keys))
        args: tuple[Any, ...] = ()
        if kind == "put":
            args = (draw(st.sampled_from(VALUES)),)
        elif kind == "cas":
            args = (draw(st.sampled_from(VALUES)), draw(st.integers(0, 4)))
        point = 10.0 * i
        invoke = point - draw(st.integers(0, 40))
        complete = point + draw(st.integers(0, 40))
        client = f"c{draw(st.integers(0, 4))}"
        fate = "ok" if last else draw(st.sampled_from(["ok", "ok", "ok", "lost", "phantom"]))
        if fate == "phantom" and kind != "get":  # sent, never applied, never answered
            history.append(Operation(client, kind, key, args, invoke, None, None,
                                     Outcome.UNKNOWN))
            continue
        result = store.apply(kind, key, args)
        if fate == "ok":
            history.append(Operation(client, kind, key, args, invoke, complete, result))
        else:
            history.append(Operation(client, kind, key, args, invoke, None, None,
                                     Outcome.UNKNOWN))
    order = draw(st.permutations(range(len(history))))  # recording order must not matter
    return [history[i] for i in order], versioning


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stretched_histories())
def test_executed_and_stretched_histories_are_linearizable(
        case: tuple[list[Operation], DeleteVersioning]) -> None:
    history, versioning = case
    result = check(history, KVModel(versioning))
    assert result.linearizable is True, result.explanation


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stretched_histories(), st.data())
def test_a_read_of_a_never_written_value_is_rejected(
        case: tuple[list[Operation], DeleteVersioning], data: st.DataObject) -> None:
    history, versioning = case
    reads = [i for i, op in enumerate(history) if op.op == "get" and not op.unknown]
    victim = data.draw(st.sampled_from(reads))
    result = history[victim].result
    assert isinstance(result, tuple)
    version = result[1]
    history[victim] = dataclasses.replace(history[victim], result=("never-written", version))
    verdict = check(history, KVModel(versioning))
    assert verdict.linearizable is False
    assert verdict.bad_key == history[victim].key
    assert verdict.failure is not None


def _random_result(draw: Callable[[st.SearchStrategy[Any]], Any], kind: str) -> Any:
    version = st.integers(0, 4)
    if kind == "get":
        return (draw(st.sampled_from((None, *VALUES))), draw(version))
    if kind == "put":
        return draw(version)
    if kind == "cas":
        return (draw(st.booleans()), draw(version))
    return draw(st.booleans())


def _by_definition(history: list[Operation], model: Model[Any]) -> bool:
    """Linearizability straight from its definition, exhaustively, for tiny histories.

    Some order of all operations with a known outcome, plus any of those with
    an unknown one, that puts ``a`` before ``b`` whenever ``a`` completed before
    ``b`` was invoked, and in which every result fits the model. No
    partitioning, no memoization, no dropping: nothing the checker relies on.
    """
    frozen = [op.frozen() for op in history]

    def extend(left: frozenset[int], states: dict[str, Any]) -> bool:
        if all(frozen[i].unknown for i in left):
            return True
        for i in left:
            op = frozen[i]
            if any((done := frozen[j].complete) is not None and done < op.invoke
                   for j in left):
                continue  # something still unplaced had to come first
            fits, after = model.step(states.get(op.key, model.init()), op)
            if fits and extend(left - {i}, {**states, op.key: after}):
                return True
        return False

    return extend(frozenset(range(len(frozen))), {})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stretched_histories(max_ops=7, keys=KEYS[:2]), st.data())
def test_the_search_agrees_with_the_definition(
        case: tuple[list[Operation], DeleteVersioning], data: st.DataObject) -> None:
    history, versioning = case
    for i, op in enumerate(history):  # garble some results: a mix of good and bad histories
        if not op.unknown and data.draw(st.integers(0, 3)) == 0:
            history[i] = dataclasses.replace(op, result=_random_result(data.draw, op.op))
    model = KVModel(versioning)
    expected = _by_definition(history, model)
    result = check(history, model)
    assert result.linearizable is expected, result.explanation
    if not expected:
        assert result.failure is not None
        bad_key = [op for op in history if op.key == result.bad_key]
        assert not _by_definition(bad_key, model)  # the key named is itself a culprit


@st.composite
def register_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to seven operations on one register, anywhere in time, with arbitrary results."""
    values = st.sampled_from((None, "x", "y"))
    history = []
    for i in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(("read", "write", "cas")))
        args = {"read": (), "write": (draw(values),), "cas": (draw(values), draw(values))}[kind]
        result = {"read": draw(values), "write": None, "cas": draw(st.booleans())}[kind]
        invoke = float(draw(st.integers(0, 30)))
        unknown = kind != "read" and draw(st.integers(0, 3)) == 0
        complete = None if unknown else invoke + draw(st.integers(0, 20))
        history.append(Operation(f"c{i}", kind, "r", args, invoke, complete,
                                 None if unknown else result,
                                 Outcome.UNKNOWN if unknown else Outcome.OK))
    return history


@settings(max_examples=300, deadline=None)
@given(register_histories())
def test_the_search_agrees_with_the_definition_on_a_register(history: list[Operation]) -> None:
    model = RegisterModel()
    assert check(history, model).linearizable is _by_definition(history, model)


# -- speed ----------------------------------------------------------------------------


def test_two_thousand_operations_check_quickly() -> None:
    history = synthesize(Random(4), SynthSettings(operations=2000, keys=20, clients=5,
                                                  unknown_fraction=0.05))
    started = time.perf_counter()
    result = check(history)
    elapsed = time.perf_counter() - started
    print(f"2000 ops, 20 keys, 5 clients, 5% unknown: {elapsed * 1000:.0f} ms, "
          f"{result.stats.states_explored} states")
    assert result.linearizable is True, result.explanation
    assert elapsed < 5

    victim = max(i for i, op in enumerate(history) if op.op == "get" and not op.unknown)
    broken = list(history)
    broken[victim] = dataclasses.replace(history[victim], result=("never-written", 1))
    started = time.perf_counter()
    result = check(broken)
    assert result.linearizable is False and result.bad_key == history[victim].key
    assert time.perf_counter() - started < 5


def test_synthetic_histories_agree_with_the_model_under_both_delete_rules() -> None:
    for versioning in DeleteVersioning:
        for seed in range(3):
            history = synthesize(Random(seed), SynthSettings(
                operations=400, keys=4, clients=4, unknown_fraction=0.1,
                delete_versioning=versioning))
            assert check(history, KVModel(versioning)).linearizable is True
