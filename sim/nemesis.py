"""Fault schedules: scripted by hand or drawn from the seed ("swarm" testing).

How this works: a nemesis is nothing but a list of timed ``FaultAction``s that
the world puts on its event heap before the run starts; it takes no decisions
while the run goes on, so the whole schedule can be printed before the first
event and replayed from its text. Every action has a one-line text form,

    at 5 partition n0,n1 | n2,n3,n4     cut links between the groups, both ways
    at 5 oneway n0 -> n1,n2             drop what n0 sends to n1 and n2
    at 10 heal                          remove every partition and one-way cut
    at 3 crash n2 / at 8 restart n2     kill -9 the process / start a new one
    at 4 pause n1 / at 6 resume n1      SIGSTOP / SIGCONT
    at 2 loss 0.1                       also: duplicate P, reorder P
    at 2 skew n3 +500                   n3's wall clock runs 500 ms ahead

and ``parse_script`` reads it back (blank lines and ``#`` comments ignored), so
a swarm schedule's ``describe()`` is itself a script that reproduces it.

``SwarmNemesis`` follows swarm testing: from the fault kinds offered it draws
which are active in this run and how hard each one hits (rates, episode lengths,
crash frequency), then a timeline for each. Varying the mix per seed finds bugs
that an always-everything nemesis masks (constant partitions hide the races that
need a healthy network most of the time). Every fault ends by ``heal_at``: the
network is whole, rates are back to 0, every node is up with no skew; checkers
then verify the system converges in the remaining time. At most
``max_down_fraction`` of the nodes are crashed or paused at any one time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Protocol

__all__ = [
    "FaultAction",
    "FaultKind",
    "Nemesis",
    "ScriptedNemesis",
    "SwarmNemesis",
    "SwarmSettings",
    "node_names",
    "parse_script",
]

_NODE_VERBS = frozenset({"crash", "restart", "pause", "resume"})
_RATE_VERBS = frozenset({"loss", "duplicate", "reorder"})
_GROUP_VERBS = frozenset({"partition", "oneway"})
VERBS = _NODE_VERBS | _RATE_VERBS | _GROUP_VERBS | {"heal", "skew"}


class FaultKind(enum.Enum):
    """The fault families a swarm nemesis can draw from."""

    LOSS = "loss"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    PARTITION = "partition"
    CRASH = "crash"
    PAUSE = "pause"
    SKEW = "skew"


def node_names(count: int) -> list[str]:
    """The names the world gives ``count`` nodes: ``n0`` ... ``n{count-1}``."""
    return [f"n{i}" for i in range(count)]


def _number(value: float) -> str:
    # Integral values print without ".0"; others with repr, which reads back exactly.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _split_group(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not text.strip() or any(not name or " " in name for name in names):
        raise ValueError(f"bad node group {text!r} (expected names separated by commas)")
    return names


@dataclass(frozen=True, slots=True)
class FaultAction:
    """One fault applied at virtual time ``at``: a verb and its text arguments.

    ``args`` by verb: partition: two or more groups ("n0,n1"); oneway: source
    group, destination group; crash/restart/pause/resume: a node name; skew: a
    node name and signed milliseconds; loss/duplicate/reorder: a probability;
    heal: nothing. Invalid actions raise ValueError when built.
    """

    at: float
    kind: str
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.at) and self.at >= 0):
            raise ValueError(f"fault time ({self.at}) must be a finite number >= 0")
        kind, args = self.kind, self.args
        if kind not in VERBS:
            raise ValueError(f"unknown fault {kind!r} (known: {', '.join(sorted(VERBS))})")
        expected = {"heal": 0, "skew": 2, "oneway": 2}.get(kind, 1)
        if kind == "partition":
            if len(args) < 2:
                raise ValueError(f"partition needs two or more groups, got {len(args)}")
        elif len(args) != expected:
            raise ValueError(f"{kind} takes {expected} argument(s), got {len(args)}: {args}")
        if kind in _GROUP_VERBS:
            seen: set[str] = set()
            for group in args:
                for name in _split_group(group):
                    if name in seen:
                        raise ValueError(f"{kind}: node {name!r} is in two groups")
                    seen.add(name)
        elif kind in _NODE_VERBS or kind == "skew":
            _split_group(args[0])
            if "," in args[0]:
                raise ValueError(f"{kind} takes one node, got {args[0]!r}")
        if kind == "skew":
            try:
                int(args[1])
            except ValueError:
                raise ValueError(f"skew milliseconds {args[1]!r} is not an integer") from None
        if kind in _RATE_VERBS:
            try:
                rate = float(args[0])
            except ValueError:
                raise ValueError(f"{kind} rate {args[0]!r} is not a number") from None
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{kind} rate ({rate}) must be a probability in [0, 1]")
        # One spelling per meaning, so actions parsed back from text compare equal.
        object.__setattr__(self, "args", _canonical_args(kind, args))

    @property
    def groups(self) -> list[list[str]]:
        """The node groups of a partition or oneway action."""
        assert self.kind in _GROUP_VERBS, self
        return [_split_group(group) for group in self.args]

    @property
    def node(self) -> str:
        """The node of a crash/restart/pause/resume/skew action."""
        assert self.kind in _NODE_VERBS or self.kind == "skew", self
        return self.args[0]

    @property
    def value(self) -> float:
        """The rate of a loss/duplicate/reorder action, or the milliseconds of a skew."""
        assert self.kind in _RATE_VERBS or self.kind == "skew", self
        return float(self.args[-1])

    def nodes(self) -> list[str]:
        """Every node name the action mentions."""
        if self.kind in _GROUP_VERBS:
            return [name for group in self.groups for name in group]
        if self.kind in _NODE_VERBS or self.kind == "skew":
            return [self.args[0]]
        return []

    def describe(self) -> str:
        """The action as one script line (``parse_script`` reads it back)."""
        head = f"at {_number(self.at)} {self.kind}"
        if self.kind == "partition":
            return f"{head} " + " | ".join(self.args)
        if self.kind == "oneway":
            return f"{head} {self.args[0]} -> {self.args[1]}"
        if self.kind == "skew":
            skew_ms = int(self.args[1])
            return f"{head} {self.args[0]} {skew_ms:+d}" if skew_ms else f"{head} {self.args[0]} 0"
        return " ".join([head, *self.args])


def _canonical_args(kind: str, args: tuple[str, ...]) -> tuple[str, ...]:
    if kind in _GROUP_VERBS:
        return tuple(",".join(_split_group(group)) for group in args)
    if kind == "skew":
        return (args[0].strip(), str(int(args[1])))
    if kind in _RATE_VERBS:
        return (_number(float(args[0])),)
    return tuple(arg.strip() for arg in args)


def _parse_line(text: str) -> FaultAction:
    words = text.split(None, 3)
    if len(words) < 3 or words[0] != "at":
        raise ValueError("expected 'at <seconds> <fault> [arguments]'")
    try:
        at = float(words[1])
    except ValueError:
        raise ValueError(f"time {words[1]!r} is not a number") from None
    kind = words[2]
    rest = words[3] if len(words) > 3 else ""
    args: tuple[str, ...]
    if kind == "partition":
        args = tuple(",".join(_split_group(group)) for group in rest.split("|"))
    elif kind == "oneway":
        sides = rest.split("->")
        if len(sides) != 2:
            raise ValueError("oneway needs '<sources> -> <destinations>'")
        args = tuple(",".join(_split_group(side)) for side in sides)
    else:
        args = tuple(rest.split())
    return FaultAction(at, kind, args)


def parse_script(text: str) -> list[FaultAction]:
    """Read a fault script, one ``at <seconds> <fault> ...`` per line.

    Raises ValueError naming the line number and text of the first bad line.
    """
    actions: list[FaultAction] = []
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        try:
            actions.append(_parse_line(content))
        except ValueError as exc:
            raise ValueError(f"fault script line {number} {line.strip()!r}: {exc}") from None
    return actions


class Nemesis(Protocol):
    """A fault schedule, fixed before the run starts."""

    def actions(self) -> Sequence[FaultAction]:
        """Every fault, in time order (ties keep their order)."""
        ...

    def describe(self) -> str:
        """The schedule as text (comments, then one script line per action)."""
        ...


class ScriptedNemesis:
    """A fault schedule written by hand (a list of actions or a script)."""

    def __init__(self, actions: Iterable[FaultAction]) -> None:
        # A stable sort: actions at the same time keep the order they were written in.
        self._actions = sorted(actions, key=lambda action: action.at)

    @classmethod
    def parse(cls, script: str) -> ScriptedNemesis:
        """Build from script text (see ``parse_script``)."""
        return cls(parse_script(script))

    def actions(self) -> list[FaultAction]:
        """Every fault, in time order."""
        return list(self._actions)

    def describe(self) -> str:
        """The schedule as script text."""
        lines = [f"# scripted nemesis: {len(self._actions)} action(s)"]
        lines += [action.describe() for action in self._actions]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SwarmSettings:
    """Ranges the swarm nemesis draws each run's fault intensities from.

    ``activation`` is the chance each offered kind is active in a run (1.0: all
    of them; at least one is always active). Pairs are (low, high) ranges for
    a mean that is drawn once per run; individual episodes then vary around it.
    Crash, pause and skew intervals are cluster-wide (time between two crashes
    anywhere), so a larger cluster sees the same fault rate, not a higher one.
    ``max_down_fraction`` bounds crashed-plus-paused nodes at any instant; the
    default keeps a majority up so quorum systems can make progress.
    """

    activation: float = 0.5
    loss_max: float = 0.2
    duplicate_max: float = 0.1
    reorder_max: float = 0.3
    episode_s: tuple[float, float] = (1.0, 8.0)
    gap_s: tuple[float, float] = (0.5, 5.0)
    crash_interval_s: tuple[float, float] = (1.0, 10.0)
    pause_interval_s: tuple[float, float] = (1.0, 10.0)
    down_s: tuple[float, float] = (0.5, 5.0)
    skew_interval_s: tuple[float, float] = (1.0, 10.0)
    skew_ms_max: int = 2000
    max_down_fraction: float = 0.49

    def __post_init__(self) -> None:
        for name in ("activation", "loss_max", "duplicate_max", "reorder_max"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} ({value}) must be in [0, 1]")
        for name in (
            "episode_s",
            "gap_s",
            "crash_interval_s",
            "pause_interval_s",
            "down_s",
            "skew_interval_s",
        ):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} ({low}, {high}) must satisfy 0 < low <= high")
        if not 0.0 <= self.max_down_fraction < 1.0:
            raise ValueError(f"max_down_fraction ({self.max_down_fraction}) must be in [0, 1)")


_PARTITION_SHAPES = ("halves", "minority", "isolate", "oneway")


class SwarmNemesis:
    """A fault schedule drawn from ``rng``: which kinds are active, how hard, and when."""

    def __init__(
        self,
        kinds: Collection[FaultKind],
        rng: Random,
        duration: float,
        nodes: Sequence[str] | int,
        heal_at: float | None = None,
        settings: SwarmSettings | None = None,
    ) -> None:
        self.settings = settings or SwarmSettings()
        self.duration = duration
        self.heal_at = round(0.7 * duration, 3) if heal_at is None else heal_at
        if not 0 <= self.heal_at <= duration:
            raise ValueError(f"heal_at ({self.heal_at}) must be within [0, duration={duration}]")
        self.nodes = node_names(nodes) if isinstance(nodes, int) else list(nodes)
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("node names repeat")
        self.max_down = math.floor(len(self.nodes) * self.settings.max_down_fraction)
        self._rng = rng
        self.offered = [kind for kind in FaultKind if kind in kinds]
        self.active = self._draw_active()
        #: Every option drawn, in the order drawn, for the run header.
        self.options: dict[str, str] = {}
        self._actions: list[FaultAction] = []
        self._generate()
        self._actions.sort(key=lambda action: action.at)

    # -- the schedule ----------------------------------------------------------------

    def actions(self) -> list[FaultAction]:
        """Every fault, in time order."""
        return list(self._actions)

    def describe(self) -> str:
        """Drawn options as comments, then the schedule as a replayable script."""
        lines = [
            f"# swarm nemesis: duration={_number(self.duration)} heal_at={_number(self.heal_at)} "
            f"nodes={len(self.nodes)} max_down={self.max_down}",
            "# offered: " + (", ".join(kind.value for kind in self.offered) or "none"),
            "# active: " + (", ".join(kind.value for kind in self.active) or "none"),
        ]
        lines += [f"# {name}: {value}" for name, value in self.options.items()]
        lines += [action.describe() for action in self._actions]
        return "\n".join(lines)

    # -- drawing ---------------------------------------------------------------------

    def _draw_active(self) -> list[FaultKind]:
        rng = self._rng
        active = [kind for kind in self.offered if rng.random() < self.settings.activation]
        if self.offered and not active:
            active = [rng.choice(self.offered)]
        return active

    def _add(self, at: float, kind: str, *args: str) -> None:
        self._actions.append(FaultAction(round(at, 3), kind, args))

    def _generate(self) -> None:
        rates = {
            FaultKind.LOSS: self.settings.loss_max,
            FaultKind.DUPLICATE: self.settings.duplicate_max,
            FaultKind.REORDER: self.settings.reorder_max,
        }
        for kind in self.active:
            if kind in rates:
                self._rate_episodes(kind, rates[kind])
            elif kind is FaultKind.PARTITION:
                self._partition_episodes()
        self._down_episodes()
        if FaultKind.SKEW in self.active:
            self._skews()

    def _episodes(self, label: str) -> list[tuple[float, float]]:
        """Non-overlapping (start, end) windows before ``heal_at``, times rounded to ms."""
        rng, settings = self._rng, self.settings
        episode_mean = round(rng.uniform(*settings.episode_s), 3)
        gap_mean = round(rng.uniform(*settings.gap_s), 3)
        self.options[f"{label}.episode_mean_s"] = str(episode_mean)
        self.options[f"{label}.gap_mean_s"] = str(gap_mean)
        windows: list[tuple[float, float]] = []
        start = round(rng.expovariate(1.0 / gap_mean), 3)
        while start < self.heal_at:
            end = round(min(start + episode_mean * rng.uniform(0.5, 1.5), self.heal_at), 3)
            if end > start:
                windows.append((start, end))
            start = round(end + rng.expovariate(1.0 / gap_mean), 3)
        return windows

    def _rate_episodes(self, kind: FaultKind, cap: float) -> None:
        rng = self._rng
        rate_max = round(rng.uniform(min(0.01, cap), cap), 3)
        self.options[f"{kind.value}.rate_max"] = str(rate_max)
        for start, end in self._episodes(kind.value):
            rate = round(rng.uniform(rate_max / 4, rate_max), 3)
            self._add(start, kind.value, _number(rate))
            self._add(end, kind.value, "0")

    def _partition_episodes(self) -> None:
        if len(self.nodes) < 2:
            self.options["partition"] = "skipped (one node)"
            return
        rng = self._rng
        for start, end in self._episodes("partition"):
            shape = rng.choice(_PARTITION_SHAPES)
            order = list(self.nodes)
            rng.shuffle(order)
            if shape == "halves":
                cut = len(order) // 2
            elif shape == "isolate":
                cut = 1
            else:
                cut = rng.randint(1, max(1, (len(order) - 1) // 2))
            first, rest = order[:cut], order[cut:]
            # Sorted by position so a group reads "n1,n4,n7", not in shuffle order.
            position = {name: i for i, name in enumerate(self.nodes)}
            groups = [",".join(sorted(g, key=position.__getitem__)) for g in (first, rest)]
            if shape == "oneway":
                if rng.random() < 0.5:
                    groups.reverse()
                self._add(start, "oneway", *groups)
            else:
                self._add(start, "partition", *groups)
            self._add(end, "heal")

    def _down_episodes(self) -> None:
        """Crashes and pauses on one timeline, so the down-count bound covers both."""
        rng, settings = self._rng, self.settings
        plans: list[tuple[FaultKind, str, str, tuple[float, float]]] = [
            (FaultKind.CRASH, "crash", "restart", settings.crash_interval_s),
            (FaultKind.PAUSE, "pause", "resume", settings.pause_interval_s),
        ]
        arrivals: list[tuple[float, int, str, str, float]] = []
        for order, (kind, down_verb, up_verb, interval) in enumerate(plans):
            if kind not in self.active:
                continue
            interval_mean = round(rng.uniform(*interval), 3)
            down_mean = round(rng.uniform(*settings.down_s), 3)
            self.options[f"{kind.value}.interval_mean_s"] = str(interval_mean)
            self.options[f"{kind.value}.down_mean_s"] = str(down_mean)
            t = round(rng.expovariate(1.0 / interval_mean), 3)
            while t < self.heal_at:
                arrivals.append((t, order, down_verb, up_verb, down_mean))
                t = round(t + rng.expovariate(1.0 / interval_mean), 3)
        if not arrivals:
            return
        if self.max_down == 0:
            self.options["down"] = "skipped (max_down is 0)"
            return
        arrivals.sort(key=lambda arrival: (arrival[0], arrival[1]))
        down: dict[str, float] = {}  # node -> time it comes back
        skipped = 0
        for t, _, down_verb, up_verb, down_mean in arrivals:
            for name in [name for name, back in down.items() if back <= t]:
                del down[name]
            if len(down) >= self.max_down:
                skipped += 1
                continue
            name = rng.choice([name for name in self.nodes if name not in down])
            back = round(min(t + down_mean * rng.uniform(0.5, 1.5), self.heal_at), 3)
            if back <= t:
                continue
            down[name] = back
            self._add(t, down_verb, name)
            self._add(back, up_verb, name)
        self.options["down.skipped_at_bound"] = str(skipped)

    def _skews(self) -> None:
        rng, settings = self._rng, self.settings
        skew_max = rng.randint(max(1, settings.skew_ms_max // 10), max(1, settings.skew_ms_max))
        interval_mean = round(rng.uniform(*settings.skew_interval_s), 3)
        self.options["skew.ms_max"] = str(skew_max)
        self.options["skew.interval_mean_s"] = str(interval_mean)
        skewed: set[str] = set()
        t = round(rng.expovariate(1.0 / interval_mean), 3)
        while t < self.heal_at:
            name = rng.choice(self.nodes)
            skewed.add(name)
            self._add(t, "skew", name, str(rng.randint(-skew_max, skew_max)))
            t = round(t + rng.expovariate(1.0 / interval_mean), 3)
        for name in self.nodes:  # node order, not set order: the schedule is deterministic
            if name in skewed:
                self._add(self.heal_at, "skew", name, "0")
