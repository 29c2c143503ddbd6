"""Node.add_service: long-running tasks started and stopped with the node."""

from __future__ import annotations

import anyio
import pytest
from test_runtime import make_node

from mesh.errors import MeshError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_service_runs_with_the_node_and_is_cancelled_when_it_stops() -> None:
    node = make_node("svc")
    started = anyio.Event()
    cancelled: list[bool] = []

    async def service() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.append(True)

    node.add_service(service)
    async with node.running():
        with anyio.fail_after(5):
            await started.wait()
        assert cancelled == []
        with pytest.raises(MeshError, match="already running"):
            node.add_service(service)
    assert cancelled == [True]
