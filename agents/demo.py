"""Built-in deterministic demo agents, and the ``--agents`` spec parser.

How this works
--------------
Three agents that need no network and no model, so a local cluster has work to
hand out and tests have something exact to check:

- ``demo.wordcount``: ``{"text": str}`` -> ``{"words": int}`` (whitespace-split);
- ``demo.sum``: ``{"numbers": [number, ...]}`` -> ``{"sum": number}`` (integers
  sum exactly; with any float the sum is ``math.fsum``, correctly rounded);
- ``demo.sleep``: ``{"seconds": number}`` -> ``{"slept": number}``, waiting that
  long (``anyio.sleep``), at most ``sleep_seconds_max``.

Each validates its input strictly (exact keys, types, sizes, finite numbers) and
raises ``AgentInputError`` naming the bad value. Every limit is in
``DemoSettings``.

``parse_agents_spec`` turns the ``agentmesh up --agents SPEC`` value into agents:
``demo`` for these, ``team`` for the specialised team of ``agents.demo_team``,
``package.module:factory`` for a callable returning agents, several separated by
commas.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from agents.agent import Agent, AgentInputError, Estimate
from mesh.errors import ConfigError

__all__ = [
    "DEMO_SPEC",
    "INTEGER_ABS_MAX",
    "DemoSettings",
    "SleepAgent",
    "SumAgent",
    "WordCountAgent",
    "demo_agents",
    "parse_agents_spec",
]

DEMO_SPEC = "demo"
"""The ``--agents`` spec naming the built-in demo agents."""
INTEGER_ABS_MAX = 2**63 - 1
"""Largest integer magnitude ``demo.sum`` accepts or returns (msgpack's signed range)."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Limits of the demo agents.

    ``text_chars_max``: longest text ``demo.wordcount`` takes (memory per task).
    ``numbers_max``: most numbers ``demo.sum`` takes.
    ``sleep_seconds_max``: longest ``demo.sleep``; keep it under the host's
    ``task_timeout_s`` or long sleeps fail as timeouts.
    ``concurrency_max``: tasks ``demo.wordcount`` and ``demo.sum`` each run at
    once. They finish in microseconds, so their limit only bounds the burst a
    node takes; a low one makes contractors refuse work they could do at once.
    ``sleep_concurrency_max``: ``demo.sleep`` tasks run at once (the long ones).
    """

    text_chars_max: int = 1_000_000
    numbers_max: int = 100_000
    sleep_seconds_max: float = 10.0
    concurrency_max: int = 32
    sleep_concurrency_max: int = 4

    def __post_init__(self) -> None:
        for name in ("text_chars_max", "numbers_max", "concurrency_max",
                     "sleep_concurrency_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} ({value!r}) must be a positive integer")
        seconds = self.sleep_seconds_max
        if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                or not math.isfinite(seconds) or seconds < 0):
            raise ConfigError(f"sleep_seconds_max ({seconds!r}) must be a finite number >= 0")


def _only_keys(capability: str, task_input: Mapping[str, Any], *keys: str) -> None:
    if not isinstance(task_input, Mapping):
        raise AgentInputError(f"{capability}: input must be an object, not "
                              f"{type(task_input).__name__}")
    missing = [k for k in keys if k not in task_input]
    if missing:
        raise AgentInputError(f"{capability}: input lacks {', '.join(map(repr, missing))}")
    extra = sorted(str(k) for k in task_input if k not in keys)
    if extra:
        raise AgentInputError(f"{capability}: unexpected input keys {extra[:5]}")


def _number(capability: str, what: str, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AgentInputError(f"{capability}: {what} must be a number, not "
                              f"{type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise AgentInputError(f"{capability}: {what} ({value!r}) must be finite")
    if isinstance(value, int) and abs(value) > INTEGER_ABS_MAX:
        raise AgentInputError(f"{capability}: {what} is an integer beyond +-(2**63 - 1)")
    return value


class WordCountAgent(Agent):
    """``demo.wordcount``: counts whitespace-separated words."""

    CAPABILITY = "demo.wordcount"

    def __init__(self, settings: DemoSettings | None = None) -> None:
        self._settings = settings or DemoSettings()
        super().__init__(self.CAPABILITY, [self.CAPABILITY],
                         concurrency_max=self._settings.concurrency_max)

    def _text(self, task_input: Mapping[str, Any]) -> str:
        _only_keys(self.CAPABILITY, task_input, "text")
        text = task_input["text"]
        if not isinstance(text, str):
            raise AgentInputError(f"{self.CAPABILITY}: text must be a string, not "
                                  f"{type(text).__name__}")
        limit = self._settings.text_chars_max
        if len(text) > limit:
            raise AgentInputError(f"{self.CAPABILITY}: text has {len(text)} characters, "
                                  f"more than text_chars_max ({limit})")
        return text

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        return {"words": len(self._text(task_input).split())}

    def estimate(self, capability: str, task_input: Mapping[str, Any] | None) -> Estimate:
        return Estimate(cost=1.0, duration_s=0.01, confidence=1.0)


class SumAgent(Agent):
    """``demo.sum``: adds numbers, exactly for integers, correctly rounded with floats."""

    CAPABILITY = "demo.sum"

    def __init__(self, settings: DemoSettings | None = None) -> None:
        self._settings = settings or DemoSettings()
        super().__init__(self.CAPABILITY, [self.CAPABILITY],
                         concurrency_max=self._settings.concurrency_max)

    def _numbers(self, task_input: Mapping[str, Any]) -> list[int | float]:
        _only_keys(self.CAPABILITY, task_input, "numbers")
        numbers = task_input["numbers"]
        if not isinstance(numbers, list | tuple):
            raise AgentInputError(f"{self.CAPABILITY}: numbers must be a list, not "
                                  f"{type(numbers).__name__}")
        limit = self._settings.numbers_max
        if len(numbers) > limit:
            raise AgentInputError(f"{self.CAPABILITY}: {len(numbers)} numbers, more than "
                                  f"numbers_max ({limit})")
        return [_number(self.CAPABILITY, f"numbers[{i}]", n) for i, n in enumerate(numbers)]

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        numbers = self._numbers(task_input)
        total: int | float
        if all(isinstance(n, int) for n in numbers):
            total = sum(numbers)
        else:
            try:
                total = math.fsum(numbers)
            except OverflowError:
                total = math.inf
        # The inputs are bounded, the sum may still leave the range: say so.
        return {"sum": _number(self.CAPABILITY, "the sum", total)}

    def estimate(self, capability: str, task_input: Mapping[str, Any] | None) -> Estimate:
        return Estimate(cost=1.0, duration_s=0.01, confidence=1.0)


class SleepAgent(Agent):
    """``demo.sleep``: waits the given seconds (for load and timeout demonstrations)."""

    CAPABILITY = "demo.sleep"

    def __init__(self, settings: DemoSettings | None = None) -> None:
        self._settings = settings or DemoSettings()
        super().__init__(self.CAPABILITY, [self.CAPABILITY],
                         concurrency_max=self._settings.sleep_concurrency_max)

    def _seconds(self, task_input: Mapping[str, Any]) -> int | float:
        _only_keys(self.CAPABILITY, task_input, "seconds")
        seconds = _number(self.CAPABILITY, "seconds", task_input["seconds"])
        limit = self._settings.sleep_seconds_max
        if not 0 <= seconds <= limit:
            raise AgentInputError(f"{self.CAPABILITY}: seconds ({seconds!r}) must be from 0 "
                                  f"to sleep_seconds_max ({limit})")
        return seconds

    async def handle(self, capability: str, task_input: Mapping[str, Any]) -> dict[str, Any]:
        seconds = self._seconds(task_input)
        await anyio.sleep(seconds)
        return {"slept": seconds}

    def estimate(self, capability: str, task_input: Mapping[str, Any] | None) -> Estimate:
        """The requested seconds when the input is known and valid, else the maximum."""
        duration: float = self._settings.sleep_seconds_max
        if task_input is not None:
            try:
                duration = float(self._seconds(task_input))
            except AgentInputError:
                pass
        return Estimate(cost=duration, duration_s=duration, confidence=1.0)


def demo_agents(settings: DemoSettings | None = None) -> tuple[Agent, ...]:
    """The built-in demo agents: word count, sum and sleep."""
    settings = settings or DemoSettings()
    return (WordCountAgent(settings), SumAgent(settings), SleepAgent(settings))


def _from_factory(spec: str) -> tuple[Agent, ...]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"agents spec {spec!r} must be 'demo' or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"agents spec {spec!r}: cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"agents spec {spec!r}: {module_name} has no callable {attribute!r}")
    made = factory()
    agents = [made] if isinstance(made, Agent) else made
    if not isinstance(agents, Iterable):
        raise ConfigError(f"agents spec {spec!r}: the factory returned "
                          f"{type(made).__name__}, not agents")
    result = tuple(agents)
    bad = [a for a in result if not isinstance(a, Agent)]
    if bad:
        raise ConfigError(f"agents spec {spec!r}: the factory returned a "
                          f"{type(bad[0]).__name__}, not an Agent")
    return result


def parse_agents_spec(spec: str, *, demo_settings: DemoSettings | None = None) -> tuple[Agent, ...]:
    """The agents an ``--agents`` value names: ``demo``, ``pkg.mod:factory``, comma-separated.

    Raises ``ConfigError`` for an empty or unknown spec, a factory that cannot be
    imported or returns something other than agents, or two agents with one name.
    """
    parts = [part.strip() for part in spec.split(",")]
    if not spec.strip() or not all(parts):
        raise ConfigError(f"agents spec {spec!r} is empty or has an empty part")
    agents: list[Agent] = []
    for part in parts:
        if part == DEMO_SPEC:
            agents.extend(demo_agents(demo_settings))
        elif part == "team":
            from agents.demo_team import team_agents  # the team pulls in the workflow code

            agents.extend(team_agents())
        elif ":" in part:
            agents.extend(_from_factory(part))
        else:
            raise ConfigError(f"agents spec part {part!r} is unknown: use 'demo', 'team' "
                              "or 'package.module:factory'")
    names = [a.name for a in agents]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"agents spec {spec!r} names agents twice: {duplicates}")
    return tuple(agents)
