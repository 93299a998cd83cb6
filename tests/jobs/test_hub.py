"""The web process's stream hub: one XREAD for every listener, each listener at
its own position, against the real Valkey."""

from __future__ import annotations

import asyncio
import uuid

import redis
import redis.asyncio as aioredis
from django.conf import settings

from apps.jobs.hub import BLOCK_MS, StreamHub


def _sid(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _key() -> str:
    return f"aip:hubtest:job:{uuid.uuid4()}"


async def _take(listener, n: int, timeout: float = 10) -> list[tuple[str, bytes]]:
    items: list[tuple[str, bytes]] = []
    async with asyncio.timeout(timeout):
        while len(items) < n:
            item = await listener.queue.get()
            assert not isinstance(item, BaseException), item
            items.append(item)
    return items


def test_listeners_at_different_positions_each_get_their_entries_once_in_order():
    async def scenario() -> None:
        hub = StreamHub(settings.REDIS_URL)
        writer = aioredis.Redis.from_url(settings.REDIS_URL)
        key = _key()
        ids = [_sid(await writer.xadd(key, {"d": f"e{i}"})) for i in range(3)]
        async with hub.listen(key, "0-0") as first, hub.listen(key, ids[1]) as second:
            assert [p for _, p in await _take(first, 3)] == [b"e0", b"e1", b"e2"]
            assert [p for _, p in await _take(second, 1)] == [b"e2"]
            later = _sid(await writer.xadd(key, {"d": "e3"}))
            assert await _take(first, 1) == [(later, b"e3")]
            assert await _take(second, 1) == [(later, b"e3")]
            assert first.queue.empty() and second.queue.empty()
        assert not hub.listeners  # leaving forgets the stream
        await hub.close()
        await writer.delete(key)
        await writer.aclose()

    asyncio.run(scenario())


def test_a_new_stream_joins_a_blocked_read_at_once_and_reads_outlast_the_client_socket_timeout():
    """The reader blocks on one stream; a second listener's stream is read without
    waiting for that block to end (CLIENT UNBLOCK). Then nothing is written for
    longer than redis-py's default 5 s socket timeout: the blocked reader must not
    fail (it did, cutting every quiet stream after 5 s)."""

    async def scenario() -> None:
        hub = StreamHub(settings.REDIS_URL)
        sync = redis.Redis.from_url(settings.REDIS_URL)
        quiet, busy = _key(), _key()
        async with hub.listen(quiet, "0-0") as waiting:
            await asyncio.sleep(0.3)  # the reader is now blocked on `quiet` alone
            assert hub.blocked
            async with hub.listen(busy, "0-0") as joining:
                sync.xadd(busy, {"d": "hello"})
                assert [p for _, p in await _take(joining, 1, timeout=BLOCK_MS / 1000 / 2)] == [b"hello"]
            await asyncio.sleep(6)
            sync.xadd(quiet, {"d": "late"})
            assert [p for _, p in await _take(waiting, 1)] == [b"late"]
        await hub.close()
        sync.delete(quiet, busy)

    asyncio.run(scenario())


def test_a_listener_joining_from_earlier_while_a_read_is_out_misses_nothing():
    """The reader is blocked reading a stream from listener A's (late) position.
    An entry arrives and, before the reader has handled it, listener B joins from
    the start: B must still get every entry, in order (it once skipped to the new
    entry, losing those between its position and A's)."""

    async def scenario() -> None:
        hub = StreamHub(settings.REDIS_URL)
        sync = redis.Redis.from_url(settings.REDIS_URL)
        key = _key()
        old = [_sid(sync.xadd(key, {"d": f"old{i}"})) for i in range(3)]
        async with hub.listen(key, old[-1]) as a:
            await asyncio.sleep(0.3)  # the reader is blocked from old[-1]
            assert hub.blocked
            sync.xadd(key, {"d": "new"})  # no await: the reader cannot run before B joins
            async with hub.listen(key, "0-0") as b:
                assert [p for _, p in await _take(b, 4)] == [b"old0", b"old1", b"old2", b"new"]
                assert [p for _, p in await _take(a, 1)] == [b"new"]
                await asyncio.sleep(0.2)
                assert a.queue.empty() and b.queue.empty()
        await hub.close()
        sync.delete(key)

    asyncio.run(scenario())
