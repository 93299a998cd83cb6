"""One Redis reader per web process for every job stream being listened to.

A listener per connection blocking in its own `XREAD` means one Redis connection
and one round trip per event per listener: a thousand streams need a thousand
connections (redis-py's pool stops at 100) and the event loop spends its time in
redis-py. The hub keeps ONE connection blocked in `XREAD BLOCK ... STREAMS k1 k2
...` over all the streams its listeners follow, and hands each entry to the
listeners of its stream. The busier the process, the more entries each call
returns.

A listener that arrives while the hub is blocked would wait for the block to
time out; `CLIENT UNBLOCK` (sent on another connection) ends the wait at once, so
the next `XREAD` includes its stream.

Each listener has its own position (`after`): it gets the entries after it, in
order, each once, with no gap. Listeners of the same stream may be at different
positions; the hub reads the stream from the least advanced of them.

One stream must not cut the others: when Redis refuses the shared XREAD (a
position it cannot parse, a key that is not a stream), the hub reads each stream
on its own, fails only the listeners of the streams Redis refuses, and carries on
for everyone else. Only a lost connection reaches every listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from django.conf import settings

logger = logging.getLogger(__name__)

BLOCK_MS = 5_000  # the hub's XREAD wait when nothing happens (listeners keep their own heartbeats)
# redis-py gives up on any read after 5 s by default, a blocked XREAD included: the
# reader's connection waits longer than its block (and still notices a dead server).
READER_SOCKET_TIMEOUT = BLOCK_MS / 1000 + 25
COUNT = 500  # entries per stream per XREAD
RETRY_SECONDS = 0.5  # after a Redis error, before reconnecting


def _id(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Listener:
    key: bytes
    last: tuple[int, int]
    queue: asyncio.Queue[tuple[str, bytes] | BaseException] = field(default_factory=asyncio.Queue)


class StreamHub:
    def __init__(self, url: str) -> None:
        self.url = url
        # Commands (CLIENT UNBLOCK, the listeners' EXISTS) go through a pool; the
        # blocking XREAD has a connection of its own.
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64, timeout=10)
        self.commands = aioredis.Redis(connection_pool=pool)
        self.listeners: dict[bytes, set[Listener]] = {}
        self.reader_id: int | None = None
        self.blocked = False  # the reader is inside an XREAD
        self.generation = 0  # counts the reader's XREADs
        self.unblocked = -1  # the generation a CLIENT UNBLOCK was sent for
        self.changed = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def listen(self, key: str, after: str) -> AsyncIterator[Listener]:
        """Follow a stream from after `after` (an entry id, `0-0` for the start):
        entries arrive on the listener's queue as (id, JSON payload)."""
        listener = Listener(key=key.encode(), last=_id(after))
        self.listeners.setdefault(listener.key, set()).add(listener)
        self._ensure_running()
        await self._wake()
        try:
            yield listener
        finally:
            group = self.listeners.get(listener.key)
            if group is not None:
                group.discard(listener)
                if not group:
                    del self.listeners[listener.key]

    async def close(self) -> None:
        """Stop the reader and close the connections (the process keeps its hub for
        its whole life; tests make their own). The reader is woken rather than
        cancelled: redis-py does not give up a blocked read when its task is
        cancelled, it waits for the block to end."""
        self.closing = True
        self.changed.set()
        if self.task is not None:
            while not self.task.done():
                if self.blocked and self.reader_id is not None:
                    await self.commands.client_unblock(self.reader_id)
                await asyncio.sleep(0.01)
        await self.commands.aclose()

    def _ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="job-stream-hub")

    async def _wake(self) -> None:
        """Make the reader include a new stream now instead of after its block.
        CLIENT UNBLOCK travels on another connection and may reach Redis before
        the XREAD it should end; it then answers 0, and is sent again while that
        same XREAD is still outstanding. One unblock per XREAD is enough for any
        number of new listeners."""
        self.changed.set()
        generation = self.generation
        if not self.blocked or self.unblocked == generation:
            return
        self.unblocked = generation
        for _ in range(50):
            if self.reader_id is None or self.generation != generation or not self.blocked:
                return
            try:
                if await self.commands.client_unblock(self.reader_id):
                    return
            except aioredis.RedisError:
                return
            await asyncio.sleep(0.001)

    async def _run(self) -> None:
        while not self.closing:
            try:
                await self._read_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: tell the listeners, then retry
                logger.warning("job stream hub: %s; reconnecting", exc)
                for group in list(self.listeners.values()):
                    for listener in group:
                        listener.queue.put_nowait(exc)
                await asyncio.sleep(RETRY_SECONDS)

    async def _read_forever(self) -> None:
        reader = aioredis.Redis.from_url(self.url, single_connection_client=True, socket_timeout=READER_SOCKET_TIMEOUT)
        try:
            self.reader_id = await reader.client_id()
            while not self.closing:
                if not self.listeners:
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                self.changed.clear()
                # Each stream is read from its least advanced listener's position.
                starts = {key: min(listener.last for listener in group) for key, group in self.listeners.items()}
                streams = {key: f"{ms}-{seq}" for key, (ms, seq) in starts.items()}
                self.generation += 1
                self.blocked = True
                try:
                    response: Any = await reader.xread(streams, block=BLOCK_MS, count=COUNT)  # type: ignore[arg-type]
                except aioredis.ResponseError as exc:
                    self.blocked = False
                    # Redis answered, refusing the command: a stream of it is at fault,
                    # not the connection. Find which, without blocking.
                    response = await self._read_each(streams, starts, exc)
                finally:
                    self.blocked = False
                for key, entries in response or ():
                    self._deliver(key, entries, starts[key])
        finally:
            self.reader_id = None
            await reader.aclose()

    async def _read_each(
        self, streams: dict[bytes, str], starts: dict[bytes, tuple[int, int]], error: Exception
    ) -> list[tuple[bytes, Any]]:
        """Read each stream on its own (one pipelined round trip); fail the
        listeners whose position the refused read started from (the least
        advanced; the others get the next read), and return what the streams
        Redis accepted gave."""
        pipeline = self.commands.pipeline(transaction=False)
        for key, start in streams.items():
            pipeline.xread({key: start}, count=COUNT)
        results = await pipeline.execute(raise_on_error=False)
        response: list[tuple[bytes, Any]] = []
        refused = False
        for (key, _), result in zip(streams.items(), results, strict=True):
            if isinstance(result, Exception):
                refused = True
                logger.warning("job stream hub: %s refused (%s); failing its listeners", key.decode(), result)
                self._fail(key, starts[key], result)
            elif result:
                response.extend(result)
        if not refused:  # nothing to blame: do not spin on a command Redis keeps refusing
            logger.warning("job stream hub: XREAD refused (%s) though every stream reads alone", error)
            await asyncio.sleep(RETRY_SECONDS)
        return response

    def _fail(self, key: bytes, start: tuple[int, int], error: Exception) -> None:
        group = self.listeners.get(key, set())
        for listener in [listener for listener in group if listener.last == start]:
            group.discard(listener)
            listener.queue.put_nowait(error)
        if not group:
            self.listeners.pop(key, None)

    def _deliver(self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]], start: tuple[int, int]) -> None:
        """Hand the entries read after `start` to the stream's listeners. Only a
        listener at or after `start` may take them: one that joined while this
        XREAD was out (from an earlier position) would otherwise skip the entries
        between its position and `start`; the next XREAD starts from it."""
        for listener in self.listeners.get(key, ()):
            if listener.last < start:
                continue
            for entry_id, fields in entries:
                position = _id(entry_id)
                if position > listener.last:
                    listener.last = position
                    listener.queue.put_nowait((entry_id.decode(), fields[b"d"]))


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def stream_hub() -> StreamHub:
    """This event loop's hub (tests run several loops in one process)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = StreamHub(settings.REDIS_URL)
    return hub
