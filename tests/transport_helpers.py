"""What the transport and lane tests share: waiting with a deadline, and serving
transports for the length of a block (closed afterwards, even on failure)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from mesh.transport import Transport


async def wait_until(condition: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``deadline_s``."""
    with anyio.fail_after(deadline_s):
        while not condition():
            await anyio.sleep(0.002)


@asynccontextmanager
async def serving(*transports: Transport) -> AsyncIterator[None]:
    """Run each transport's ``serve`` for the block, then stop and close them all."""
    try:
        async with anyio.create_task_group() as tg:
            for transport in transports:
                await tg.start(transport.serve)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        for transport in transports:
            transport.close()
