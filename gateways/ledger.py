"""Kafka `tally.ledger` and `tally.alerts`, filled from the event store's notification log.

Every domain event goes to `tally.ledger` in the audit envelope (`projections.audit`), keyed by its
aggregate id; the alerts (`wallet.balance_low`, `wallet.topped_up`, `entitlement.exceeded`) go to
`tally.alerts` as well, under their alert names. Each topic has one partition: domain events are
few (the store takes about a thousand commands a second), and one partition keeps the store's
order, so a consumer's progress is a single position. Each message carries two headers: `position`
(its event's position in the store) and `previous` (the position of the message sent before it on
the topic): a consumer that finds `previous` beyond what it applied knows messages were lost. After
each batch, `tally.alerts` gets a mark (no value, key `mark`) at the batch's last position: nothing
else for alerts up to there.

At least once out, idempotent in. Consumers named in TALLY_LEDGER_CONSUMERS record the position
they applied in the database (`tally_positions`, as `ledger:<name>`: `consume` does it in the
transaction of the consumer's own writes). The relay starts from the lowest of those positions
(when none is named, from its own mark, `relay:ledger`, saved once the broker acknowledged), and
when the consumers stop moving while it is ahead (a broker that came back empty lost what it held),
it rewinds to the lowest and sends again; consumers skip what they applied.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from gateways.kafka import Relay, pause
from projections import audit
from projections.store import (
    Cursor,
    Database,
    advance_position,
    lock_position,
    positions,
    save_position,
)

LEDGER_TOPIC, ALERTS_TOPIC = "tally.ledger", "tally.alerts"
TOPICS = {LEDGER_TOPIC: 1, ALERTS_TOPIC: 1}
BATCH = 1_000
POLL_SECONDS = 0.1
MARK = "relay:ledger"
log = logging.getLogger("tally.relay")
_encode = msgspec.json.Encoder().encode


def consumer_position(name: str) -> str:
    return f"ledger:{name}"


class LedgerRelay(Relay):
    name, poll_seconds, topics = "ledger relay", POLL_SECONDS, TOPICS

    def __init__(self, ledger: Any, bootstrap: str, consumers: Collection[str] = (), *,
                 stall_seconds: float = 5.0) -> None:
        """`ledger`: an `api.ledger.Ledger` (its store, its runner, its read-model database)."""
        self.ledger, self.bootstrap, self.consumers = ledger, bootstrap, tuple(consumers)
        self.stall_seconds = stall_seconds
        self.sent = 0  # the position published so far in this session (a rewind moves it back)
        self.chain = dict.fromkeys(TOPICS, 0)  # per topic, the position of the last message sent to it

    def _restart_at(self, position: int) -> None:
        """Send everything after `position` (at or below every consumer's position)."""
        self.sent, self.chain = position, dict.fromkeys(TOPICS, position)

    def _resume_at(self) -> int:
        low = self._lowest()
        return low if low is not None else positions(self.ledger.database, [MARK])[0]

    def _lowest(self) -> int | None:
        if not self.consumers:
            return None  # nobody to watch: what the broker acknowledged is all there is to go by
        return min(positions(self.ledger.database, [consumer_position(name) for name in self.consumers]))

    def _read(self, after: int) -> list[audit.Envelope]:
        return self.ledger.ledger_events(after, BATCH)

    async def _publish(self, producer: AIOKafkaProducer, batch: list[audit.Envelope]) -> None:
        """Send the batch, its alerts and a mark to `tally.alerts`; return once the broker acknowledged all."""
        sends = []

        async def send(topic: str, value: bytes, key: bytes, position: int) -> None:
            headers = [("position", str(position).encode()), ("previous", str(self.chain[topic]).encode())]
            sends.append(await producer.send(topic, value, key=key, partition=0, headers=headers))
            self.chain[topic] = position

        for envelope in batch:
            key = envelope.aggregate_id.encode()
            await send(LEDGER_TOPIC, _encode(envelope), key, envelope.position)
            alert = audit.ALERTS.get(envelope.type)
            if alert is not None:
                await send(ALERTS_TOPIC, _encode(msgspec.structs.replace(envelope, type=alert)), key, envelope.position)
        last = batch[-1].position
        if self.chain[ALERTS_TOPIC] != last:  # alerts' consumers learn that nothing else came up to here
            await send(ALERTS_TOPIC, b"", b"mark", last)
        await asyncio.gather(*sends)
        self.sent = last
        await asyncio.to_thread(advance_position, self.ledger.database, MARK, last)


async def consume(bootstrap: str, database: Database, name: str, handle: Callable[[Cursor, audit.Envelope], None],
                  stop: asyncio.Event, topic: str = LEDGER_TOPIC) -> None:
    """Hand each event of `topic` to `handle(cursor, envelope)` once, until `stop`: in one transaction
    with the position applied (`ledger:<name>`; name the consumer in TALLY_LEDGER_CONSUMERS so the
    relay resumes from it). What the relay sends again is skipped by its position; a message whose
    `previous` is past what was applied means messages were lost before it: it waits for the relay
    to send them again."""
    while not stop.is_set():
        try:
            await _consume(bootstrap, database, name, handle, stop, topic)
        except (KafkaError, OSError) as error:  # the broker is away: wait, then read on from the position
            log.warning("ledger consumer %s: broker unavailable (%s); retrying", name, error)
            await pause(stop, 1.0)


async def _consume(bootstrap: str, database: Database, name: str, handle: Callable[[Cursor, audit.Envelope], None],
                   stop: asyncio.Event, topic: str) -> None:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"tally-{name}",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                session_timeout_ms=2_000, heartbeat_interval_ms=300, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        while not stop.is_set():
            found = await consumer.getmany(timeout_ms=200, max_records=BATCH)
            records = [record for batch in found.values() for record in batch]
            if records:
                await asyncio.to_thread(_apply, database, name, handle, records)
                with contextlib.suppress(KafkaError):  # offsets only spare re-reading: positions are the truth
                    await consumer.commit()
    finally:
        await consumer.stop()


def _apply(database: Database, name: str, handle: Callable[[Cursor, audit.Envelope], None], records: list) -> None:
    with database.transaction(write=True) as cursor:
        applied = lock_position(cursor, consumer_position(name))
        for record in records:
            headers = dict(record.headers)
            position, previous = int(headers["position"]), int(headers["previous"])
            if position <= applied:
                continue  # sent again: applied already
            if previous > applied:
                break  # lost messages before it: the relay sends them again
            if record.value:  # not a mark
                handle(cursor, msgspec.json.decode(record.value, type=audit.Envelope))
            applied = position
        save_position(cursor, consumer_position(name), applied)
