"""The garbage collector's tuning for node processes (``mesh.collector``)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mesh.collector import tune_collector
from mesh.config import NodeConfig


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("collector_restored")
def test_a_node_freezes_what_it_holds_and_collects_its_youngest_objects_less_often() -> None:
    _, older, oldest = gc.get_threshold()
    tune_collector(50_000)
    assert gc.get_threshold() == (50_000, older, oldest)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector_restored")
def test_zero_keeps_pythons_collector_as_it_is() -> None:
    before = gc.get_threshold()
    tune_collector(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_threshold_is_a_node_setting_with_bounds() -> None:
    assert NodeConfig().gc_young_threshold == 50_000
    with pytest.raises(ValueError, match="gc_young_threshold"):
        NodeConfig(gc_young_threshold=-1)
