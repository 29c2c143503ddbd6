"""Properties of the replay window and the hybrid logical clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.hlc import LOGICAL_BITS, HybridClock, make_timestamp, wall_ms_of
from mesh.replay import ReplayWindow

sequences = st.lists(st.integers(min_value=0, max_value=2_000), max_size=300)


def reference_accepts(history: list[int], seq: int, width: int) -> bool:
    """The specification: not among the last ``width`` accepted, and above every
    accepted number the window has forgotten."""
    remembered, forgotten = history[-width:], history[:-width]
    return seq not in remembered and seq > max(forgotten, default=-1)


@settings(max_examples=300)
@given(sequences, st.integers(min_value=1, max_value=200))
def test_replay_window_matches_its_specification(seqs: list[int], width: int) -> None:
    window = ReplayWindow(width)
    accepted: list[int] = []
    for seq in seqs:
        expected = reference_accepts(accepted, seq, width)
        assert window.check(seq) is expected, (accepted, seq)
        if expected:
            window.accept(seq)
            accepted.append(seq)
    assert window.highest == (max(accepted) if accepted else -1)


@given(sequences)
def test_replay_window_accepts_each_number_at_most_once(seqs: list[int]) -> None:
    window = ReplayWindow(64)
    accepted = []
    for seq in seqs:
        if window.check(seq):
            window.accept(seq)
            accepted.append(seq)
    assert len(accepted) == len(set(accepted))


events = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=10_000),
              st.integers(min_value=0, max_value=1 << 40)),
    max_size=200,
)


@settings(max_examples=300)
@given(events)
def test_hlc_is_strictly_monotonic_and_dominates_what_it_observed(
    steps: list[tuple[bool, int, int]],
) -> None:
    clock = HybridClock()
    wall = 1_000_000
    previous = clock.last
    for is_receive, wall_step, remote in steps:
        wall += wall_step - 5_000  # wall clocks may also step backwards
        wall = max(wall, 0)
        stamp = clock.observe(remote, wall) if is_receive else clock.now(wall)
        assert stamp > previous
        assert stamp >= make_timestamp(wall)
        if is_receive:
            assert stamp > remote
        previous = stamp


def test_hlc_logical_counter_breaks_ties_within_one_millisecond() -> None:
    clock = HybridClock()
    stamps = [clock.now(5) for _ in range(3)]
    assert stamps == [make_timestamp(5, 0), make_timestamp(5, 1), make_timestamp(5, 2)]
    assert all(wall_ms_of(s) == 5 for s in stamps)


def test_hlc_exhausted_counter_carries_into_the_wall_part() -> None:
    clock = HybridClock(make_timestamp(7, (1 << LOGICAL_BITS) - 1))
    assert wall_ms_of(clock.now(7)) == 8
