"""The distributed driver: a Faust app (`tally worker`) that keeps the usage read model from Kafka.

It consumes `tally.usage` (filled by `tally relay`), in batches, and applies each partition's
messages with `usage_readings.apply_partition`: the same reducer as the in-process runner, the
read-model rows and the partition's position committed in one transaction. Kafka offsets are only
a hint: at least once in, the stored positions make it effectively once. Several workers share the
partitions through Faust's consumer group.
"""

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust
import msgspec
from faust.transport.drivers import aiokafka as faust_kafka

from projections import usage_readings
from projections.store import Database
from projections.usage_log import Entry

BATCH = 2_000
WITHIN_SECONDS = 0.05
FETCH_MAX_WAIT_MS = 100  # Faust fixes 1,500 ms; Tansu holds a fetch that long, a second of staleness
_decode = msgspec.json.Decoder(Entry).decode


def create_worker(bootstrap: str, database: Database, datadir: Path) -> faust.App:
    """The Faust app, with the settings the Tansu broker needs (see DEVELOPERS.md).

    Faust keeps nothing of ours in datadir (the read model and its positions live in the database), but it
    creates the folder: under Tally's data dir, not wherever the worker was started.
    """
    usage_readings.migrate(database)
    datadir.mkdir(parents=True, exist_ok=True)  # Faust makes only the last folder
    app = faust.App(
        "tally-usage",
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=2.0,
        broker_heartbeat_interval=0.3,
        consumer_auto_offset_reset="earliest",
        topic_partitions=usage_readings.PARTITIONS,
        web_enabled=False,
        datadir=str(datadir),
        value_serializer="raw",
        key_serializer="raw",
    )
    app.transport.Consumer = _PromptConsumer
    topic = app.topic(usage_readings.USAGE_TOPIC, partitions=usage_readings.PARTITIONS, internal=True,
                      key_type=bytes, value_type=bytes)

    @app.agent(topic)
    async def usage(stream: Any) -> None:
        async for events in stream.take_events(BATCH, within=WITHIN_SECONDS):
            await asyncio.to_thread(apply_batch, database, [(e.message.partition, e.value) for e in events])

    return app


class _PromptConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when the consumer starts
        return consumer


class _PromptConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


def apply_batch(database: Database, messages: list[tuple[int, bytes]]) -> None:
    """One transaction for the batch: each partition's messages in order, with its position."""
    by_partition: dict[int, list[Entry]] = defaultdict(list)
    for partition, value in messages:
        by_partition[partition].append(_decode(value))
    with database.transaction(write=True) as cursor:
        for partition in sorted(by_partition):  # a fixed order: two workers never deadlock on positions
            usage_readings.apply_partition(cursor, partition, by_partition[partition])
