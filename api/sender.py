"""`EventSender`: buffers usage events in memory and posts them to /v1/events/batch from a
background task, so that recording usage never waits on the network; a failed batch is retried
with the same event ids, so Tally counts each event once.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self
from uuid import UUID

import httpx
import msgspec

from api.client import MAX_BATCH, AsyncClient, FieldError, TallyError

__all__ = ["Counts", "EventSender", "SenderClosed", "SenderFull"]
log = logging.getLogger("tally.client")

def uuid7() -> str:
    """A time-ordered id (RFC 9562 UUIDv7): 48 bits of Unix milliseconds, the version, 74 random bits."""
    random_bits = int.from_bytes(os.urandom(10))
    value = (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (random_bits >> 62 & 0xFFF) << 64 | 0b10 << 62 \
        | random_bits & ((1 << 62) - 1)
    return str(UUID(int=value))


class SenderFull(RuntimeError):
    """`send_nowait` found `max_buffered` events waiting: Tally is slower than the caller, or down."""


class SenderClosed(RuntimeError):
    """The sender was closed, or its background task stopped (the cause is chained)."""


@dataclass
class Counts:
    """What an EventSender has seen so far, for metrics: Tally's answers, and what it gave up on."""

    accepted: int = 0  # new events Tally acknowledged, now durable
    duplicates: int = 0  # events Tally had already (a retry whose first answer was lost counts here)
    rejected: int = 0  # events Tally refused alone (given to on_rejected); never retried
    retries: int = 0  # batch attempts repeated after a network error, a 429 or a 5xx
    failed: int = 0  # events given up: batch refused whole (4xx other than 429) or out of retries


class EventSender:
    """Buffers usage events and posts them to /v1/events/batch from a background task: when
    `max_batch` wait, and every `flush_interval` seconds. A failed batch is retried as it was, with the
    same event ids, so Tally counts each event once however often it is sent. Not thread-safe: use it
    from the event loop's thread."""

    def __init__(self, client: AsyncClient, *, max_batch: int = 1000, flush_interval: float = 0.2,
                 max_buffered: int = 100_000, max_retries: int = 8, backoff_initial: float = 0.1,
                 backoff_max: float = 10.0,
                 on_rejected: Callable[[dict[str, Any], list[FieldError]], None] | None = None,
                 on_failed: Callable[[list[dict[str, Any]], Exception], None] | None = None) -> None:
        if not 1 <= max_batch <= MAX_BATCH or max_buffered < max_batch:
            raise ValueError(f"need 1 <= max_batch <= {MAX_BATCH} and max_buffered >= max_batch")
        self._client, self._max_batch, self._max_buffered = client, max_batch, max_buffered
        self._flush_interval, self._max_retries = flush_interval, max_retries
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._on_rejected, self._on_failed = on_rejected, on_failed
        self.counts = Counts()
        self._buffer: deque[dict[str, Any]] = deque()
        self._wake, self._room, self._sending = asyncio.Event(), asyncio.Event(), asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        """Events buffered and not yet taken into a batch."""
        return len(self._buffer)

    def send_nowait(self, event: Mapping[str, Any]) -> str:
        """Buffer a copy of `event` and return its event_id, without touching the network. A missing
        event_id is a UUIDv7 (time-ordered: the store takes such ids fastest) and a missing timestamp
        is now (UTC), both given here, once, so that every retry resends the very same event. Raises
        SenderFull when `max_buffered` events wait."""
        self._ensure_running()
        if len(self._buffer) >= self._max_buffered:
            raise SenderFull(f"{len(self._buffer)} events wait to be sent; await send() to wait for room")
        stamped = dict(event)
        if stamped.get("event_id") is None:
            stamped["event_id"] = uuid7()
        stamped.setdefault("timestamp", datetime.now(UTC))
        self._buffer.append(stamped)
        if len(self._buffer) >= self._max_batch:
            self._wake.set()
        return stamped["event_id"]

    async def send(self, event: Mapping[str, Any]) -> str:
        """As send_nowait, but when the buffer is full, wait for room instead of raising."""
        while len(self._buffer) >= self._max_buffered:
            self._ensure_running()
            self._room.clear()
            await self._room.wait()
        return self.send_nowait(event)

    async def flush(self) -> None:
        """Send everything buffered now, and wait for the answers (or for retries to give up)."""
        await self._drain(partial=True)

    async def close(self) -> None:
        """Refuse new events, send everything buffered, stop the background task."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task  # raises what stopped it, if anything did
        await self._drain(partial=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ensure_running(self) -> None:
        if self._closing:
            raise SenderClosed("the sender is closed")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tally-event-sender")
            self._task.add_done_callback(lambda _: self._room.set())  # wake send() to see the task stopped
        elif self._task.done():
            cause = None if self._task.cancelled() else self._task.exception()
            raise SenderClosed("the sender's background task stopped") from cause

    async def _run(self) -> None:
        """Send full batches when woken, and everything at each flush_interval, until closed."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._flush_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(due - loop.time(), 0))
            self._wake.clear()
            timed_out = loop.time() >= due
            await self._drain(partial=timed_out)
            if timed_out:
                due = loop.time() + self._flush_interval

    async def _drain(self, *, partial: bool) -> None:
        """Post batches in order while a full one (or, with `partial`, any event) waits."""
        async with self._sending:
            while len(self._buffer) >= (1 if partial else self._max_batch):
                batch = [self._buffer.popleft() for _ in range(min(self._max_batch, len(self._buffer)))]
                self._room.set()
                await self._post(batch)

    async def _post(self, batch: list[dict[str, Any]]) -> None:
        """Post one batch until Tally answers it; network errors, 429 and 5xx are retried as they were."""
        for attempt in itertools.count():
            try:
                answer = await self._client.send_events(events=batch)
            except (httpx.TransportError, TallyError) as error:
                retryable = not isinstance(error, TallyError) or error.status == 429 or error.status >= 500
                if not retryable or attempt >= self._max_retries:
                    self._give_up(batch, error)
                    return
                self.counts.retries += 1
                await asyncio.sleep(self._backoff(attempt, getattr(error, "retry_after", None)))
                continue
            self._record(batch, answer)
            return

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Exponential with full jitter, so senders that failed together do not retry together;
        never sooner than the server's Retry-After."""
        delay = random.uniform(0, min(self._backoff_max, self._backoff_initial * 2**attempt))
        return delay if retry_after is None else max(delay, retry_after)

    def _record(self, batch: list[dict[str, Any]], answer: dict[str, Any]) -> None:
        self.counts.accepted += answer["accepted"]
        self.counts.duplicates += answer["duplicates"]
        self.counts.rejected += len(answer["rejected"])
        for rejection in answer["rejected"]:
            if self._on_rejected is not None:
                self._on_rejected(batch[rejection["index"]], msgspec.convert(rejection["errors"], list[FieldError]))

    def _give_up(self, batch: list[dict[str, Any]], error: Exception) -> None:
        self.counts.failed += len(batch)
        if self._on_failed is not None:
            self._on_failed(batch, error)
        else:
            log.error("gave up on %d usage events (first event_id %s): %s", len(batch), batch[0]["event_id"], error)
