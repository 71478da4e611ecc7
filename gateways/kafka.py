"""Kafka: the `tally.usage` topic and the relay that fills it from the durable usage log.

Each message is one log entry (JSON: position, tenant_id, customer, event_id, event_name,
timestamp_us, recorded_us, properties as JSON text, kind `event` or `void`, and `previous`), keyed
by `tenant/customer` on the partition `projections.usage_readings.partition_of` names. After each
batch the relay also sends every partition a `mark` (kind `mark`, its position the batch's last):
"nothing for you up to here", so each partition's consumer position reaches the log's end even when
its customers are quiet. `previous` chains a partition's messages: a consumer that finds a message
whose `previous` it has not applied knows messages were lost in between, and waits.

The relay publishes at least once and resumes from what consumers applied (the positions the
worker saves with its read model), never from what the broker acknowledged. When consumers stop
moving while the relay is ahead (a broker that came back empty has lost what it held, or a chain
is broken), the relay rewinds to the lowest applied position and sends again; consumers skip what
they already applied.
"""

import asyncio
import contextlib
import logging
import time

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from projections.store import Database, positions
from projections.usage_log import Entry, UsageLog
from projections.usage_readings import (
    PARTITIONS,
    USAGE_TOPIC,
    partition_of,
    position_name,
)

BATCH = 5_000
POLL_SECONDS = 0.05
log = logging.getLogger("tally.relay")
_encode = msgspec.json.Encoder().encode


async def ensure_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create the topics, with their partition counts, before anything is produced (never auto-created)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def applied(database: Database, partitions: int = PARTITIONS) -> list[int]:
    """The log position each partition's consumer has applied."""
    return positions(database, [position_name(p) for p in range(partitions)])


class Relay:
    """A relay's frame: sessions with the broker, one after another until `stop`. A session creates
    the topics, resumes from what the consumers applied (`_resume_at`), publishes what `_read` gives
    after the position sent, and, when the consumers stop moving behind it (`_lowest`; None: none
    to watch), sends again from the lowest."""

    name, poll_seconds = "relay", POLL_SECONDS
    bootstrap: str
    topics: dict[str, int]
    stall_seconds: float
    sent: int  # the position published so far in this session (a rewind moves it back)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set; a broker that goes away is waited for, then refilled."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except (KafkaError, OSError) as error:
                log.warning("%s: broker unavailable (%s); retrying", self.name, error)
                await pause(stop, 1.0)

    async def _session(self, stop: asyncio.Event) -> None:
        await ensure_topics(self.bootstrap, self.topics)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=2,
                                    max_batch_size=1 << 20, request_timeout_ms=5_000)
        await producer.start()
        try:
            self._restart_at(await asyncio.to_thread(self._resume_at))
            watch = Stall(self.stall_seconds)
            while not stop.is_set():
                batch = await asyncio.to_thread(self._read, self.sent)
                if batch:
                    await self._publish(producer, batch)
                    continue
                low = await asyncio.to_thread(self._lowest)
                if low is not None and watch.stalled(low, self.sent):
                    log.warning("%s: consumers stopped at %d, %d published: sending again from %d",
                                self.name, low, self.sent, low)
                    await ensure_topics(self.bootstrap, self.topics)
                    self._restart_at(low)
                await pause(stop, self.poll_seconds)
        finally:
            await producer.stop()

    def _resume_at(self) -> int:
        raise NotImplementedError

    def _lowest(self) -> int | None:
        raise NotImplementedError

    def _read(self, after: int) -> list:
        raise NotImplementedError

    def _restart_at(self, position: int) -> None:
        raise NotImplementedError

    async def _publish(self, producer: AIOKafkaProducer, batch: list) -> None:
        raise NotImplementedError


class UsageRelay(Relay):
    def __init__(self, usage: UsageLog, database: Database, bootstrap: str, *, stall_seconds: float = 5.0,
                 partitions: int = PARTITIONS) -> None:
        self.usage, self.database, self.bootstrap = usage, database, bootstrap
        self.stall_seconds, self.partitions = stall_seconds, partitions
        self.topics = {USAGE_TOPIC: partitions}
        self.sent = 0
        self.chain = [0] * partitions  # per partition, the position of the last message sent to it

    def _resume_at(self) -> int:
        return min(applied(self.database, self.partitions))

    _lowest = _resume_at

    def _read(self, after: int) -> list[Entry]:
        return self.usage.entries(after, BATCH)

    def _restart_at(self, position: int) -> None:
        """Send everything after `position` (at or below every consumer's position)."""
        self.sent, self.chain = position, [position] * self.partitions

    async def _publish(self, producer: AIOKafkaProducer, entries: list[Entry]) -> None:
        """Send the entries, then a mark to every partition; return once the broker acknowledged all."""
        last = entries[-1].position
        marks = [Entry(last, "", "", "", "", 0, 0, "{}", "mark") for _ in range(self.partitions)]
        sends = []
        for entry in [*entries, *marks]:
            partition = (partition_of(entry.tenant_id, entry.customer, self.partitions) if entry.kind != "mark"
                         else len(sends) - len(entries))
            message = msgspec.structs.replace(entry, previous=self.chain[partition])
            self.chain[partition] = entry.position
            key = b"mark" if entry.kind == "mark" else f"{entry.tenant_id}/{entry.customer}".encode()
            sends.append(await producer.send(USAGE_TOPIC, _encode(message), key=key, partition=partition))
        await asyncio.gather(*sends)
        self.sent = last


class Stall:
    """Consumers behind the relay whose position has not moved for `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.low, self.since = seconds, -1, time.monotonic()

    def stalled(self, low: int, sent: int) -> bool:
        now = time.monotonic()
        if low >= sent or low != self.low:
            self.low, self.since = low, now
            return False
        if now - self.since < self.seconds:
            return False
        self.since = now
        return True


async def pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
