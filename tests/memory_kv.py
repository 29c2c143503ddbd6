"""An in-process stand-in for ``mesh.kv_client.KVClient`` over a real ``KVStore`` (tests).

Every write is encoded as a ``consensus.kvstore.Request`` (this client's id, the
next sequence number, the store's clock in ms) and applied at the next log
index, and the response is decoded back from its bytes: what the Raft leader
does, minus the replication. So versions, compare-and-set and the store's
limits behave as on a cluster. Reads answer from the store as ``RaftService``
does (a list asks for one more item to tell whether more follow).

``before_write`` lets a test slip another client's write in just before one of
ours (a race a real cluster can produce); ``snapshot``/``restored`` stand for a
node restarting from its snapshot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from consensus.kvstore import (
    Command,
    CompareAndSet,
    Delete,
    KVSettings,
    KVStore,
    Put,
    Request,
    Response,
    decode_response,
    encode_request,
    encode_response,
)
from consensus.kvstore.views import Item
from mesh.kv_messages import GET_MANY_KEYS_MAX, KVItem


class MemoryKV:
    """The async methods of ``KVClient`` that memory uses, on one real ``KVStore``."""

    def __init__(self, store: KVStore | None = None, *, client_id: str = "test-client",
                 now_ms: int = 1_700_000_000_000) -> None:
        self.store = store if store is not None else KVStore(KVSettings())
        self.client_id = client_id
        self.now_ms = now_ms
        self._seq = 0
        self.writes = 0
        self.reads = 0
        self.before_write: Callable[[Command], Awaitable[None]] | None = None

    # -- writes ----------------------------------------------------------------------

    async def write(self, command: Command) -> Response:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            await hook(command)  # once: the hook's own writes do not call it again
        self._seq += 1
        self.now_ms += 1
        request = Request(self.client_id, self._seq, self.now_ms, command)
        response = self.store.apply(self.store.applied_index + 1, encode_request(request))
        self.writes += 1
        # Through bytes, as a client receives it.
        return decode_response(encode_response(response))

    async def put(self, key: str, value: bytes | str) -> Response:
        return await self.write(Put(key, value.encode() if isinstance(value, str) else value))

    async def compare_and_set(self, key: str, value: bytes | str | None,
                              expect_version: int) -> Response:
        data = value.encode() if isinstance(value, str) else value
        return await self.write(CompareAndSet(key, data, expect_version))

    async def delete(self, key: str) -> Response:
        return await self.write(Delete(key))

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: str) -> KVItem | None:
        self.reads += 1
        item = self.store.get(key)
        return None if item is None else _item(item)

    async def get_many(self, keys: Sequence[str]) -> list[KVItem]:
        if len(keys) > GET_MANY_KEYS_MAX:
            raise ValueError(f"{len(keys)} keys, more than {GET_MANY_KEYS_MAX} in one read")
        self.reads += 1
        return [_item(item) for key in keys if (item := self.store.get(key)) is not None]

    async def list(self, prefix: str = "", *, limit: int = 1000,
                   start_after: str | None = None) -> tuple[list[KVItem], bool]:
        self.reads += 1
        found = self.store.range(prefix, limit + 1, start_after)
        return [_item(item) for item in found[:limit]], len(found) > limit

    # -- restarts --------------------------------------------------------------------

    def restored(self) -> MemoryKV:
        """A client of a store rebuilt from this one's snapshot (a restarted node)."""
        store = KVStore.restore(self.store.snapshot())
        return MemoryKV(store, client_id=self.client_id + "-after", now_ms=self.now_ms)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (no read counted)."""
        return [item.key for item in self.store.range(prefix, 10**8)]


def _item(item: Item) -> KVItem:
    return KVItem(key=item.key, value=item.value, version=item.version,
                  create_index=item.create_index, mod_index=item.mod_index,
                  lease_id=item.lease)
