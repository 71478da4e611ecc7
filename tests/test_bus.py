"""Domain events on the bus: `tally relay` publishes every domain event to Kafka `tally.ledger` and
the alerts to `tally.alerts`, in the documented envelope; a relay killed mid-stream and a broker
that comes back empty lose nothing (real PostgreSQL, the real Tansu broker, real processes)."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from conftest import SETUP

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.customer import CustomerSpec
from domain.tenant import TenantSettings
from domain.wallet import GrantSpec, WalletSpec
from gateways.ledger import ALERTS_TOPIC, LEDGER_TOPIC, consume
from ops import services
from projections import audit
from projections.store import Database

TALLY = os.path.join(os.path.dirname(sys.executable), "tally")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "topics.md"


@contextlib.contextmanager
def relay(database_url: str, bootstrap: str, consumers: str = "") -> Iterator[subprocess.Popen]:
    env = {**os.environ, "TALLY_DATABASE_URL": database_url, "TALLY_KAFKA_BOOTSTRAP": bootstrap,
           "TALLY_RELAY_STALL_SECONDS": "1", "TALLY_LEDGER_CONSUMERS": consumers}
    process = subprocess.Popen([TALLY, "relay"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        services.stop(process)


def read_topic(bootstrap: str, topic: str, count: int, seconds: float = 60) -> list[bytes]:
    """The first `count` messages of the topic (its one partition), from the start."""
    async def run() -> list[bytes]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            partition = TopicPartition(topic, 0)
            consumer.assign([partition])
            consumer.seek(partition, 0)
            found: list[bytes] = []
            deadline = time.monotonic() + seconds
            while len(found) < count and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [record.value for record in records]
            return found
        finally:
            await consumer.stop()
    return asyncio.run(run())


def store_ids(ledger: Ledger) -> list[str]:
    """The envelope id of every event in the store, in store order."""
    return [envelope.id for envelope in ledger.ledger_events(0, 1_000_000)]


def test_every_domain_event_is_published_in_its_documented_envelope_and_alerts_go_apart(postgres_database):
    assert DOCS.read_text() == audit.topics_document(), "docs/topics.md is stale: python -m projections.audit"
    ledger = Ledger(postgres_database)
    try:
        # Given a tenant whose customer's wallet got a grant and a top-up (an alert: wallet.topped_up)
        tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Acme")).id
        ledger.command(ledger.customers.register, SETUP, tenant, CustomerSpec(external_id="acme", name="Acme",
                                                                               currency="USD"))
        wallet = ledger.command(ledger.wallets.create, SETUP, tenant, WalletSpec(
            customer="acme", name="Credits", credit_unit="credit", currency="USD", conversion_rate=Decimal("0.01")))
        ledger.command(ledger.grant, Actor("key_finance", "grant-1"), tenant, wallet.id,
                       GrantSpec(amount=Decimal("40.5"), kind="paid"))
        bought = ledger.command(ledger.top_up, SETUP, tenant, wallet.id, Decimal(100))
        ledger.command(ledger.invoicing.pay, SETUP, tenant, bought.id, None)
        expected = store_ids(ledger)
        with services.tansu() as bootstrap, relay(postgres_database, bootstrap):
            # When the relay runs
            published = read_topic(bootstrap, LEDGER_TOPIC, len(expected))
            alerts = read_topic(bootstrap, ALERTS_TOPIC, 1)
    finally:
        ledger.close()
    # Then every event is there once, in store order, each as documented
    checked = [audit.check(message) for message in published]
    assert [envelope.id for envelope in checked] == expected
    granted = next(envelope for envelope in checked if envelope.type == "wallet.granted")
    assert (granted.actor, granted.idempotency_key, granted.customer) == ("key_finance", "grant-1", "acme")
    assert granted.data["spec"]["amount"] == "40.5"
    # And the alert went to tally.alerts under its alert name (marks, if any, have no value)
    assert [audit.check(message).type for message in alerts if message] == ["wallet.topped_up"]


@pytest.mark.parametrize("listening", ["throughout", "only after the restart"])
def test_a_killed_relay_and_a_broker_that_comes_back_empty_lose_nothing(postgres_database, listening):
    port = services.free_port()
    bootstrap = f"127.0.0.1:{port}"
    ledger = Ledger(postgres_database)
    database = Database(postgres_database)
    with database.transaction(write=True) as cursor:
        cursor.execute("CREATE TABLE seen (id TEXT NOT NULL, position BIGINT NOT NULL)")
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Acme")).id

    def register(numbers: range) -> None:
        for n in numbers:
            ledger.command(ledger.customers.register, SETUP, tenant,
                           CustomerSpec(external_id=f"c-{n}", name=f"C{n}", currency="USD"))
            time.sleep(0.01)

    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    consumer = threading.Thread(target=loop.run_until_complete, args=(consume(
        bootstrap, database, "test", lambda cursor, envelope: cursor.execute(
            "INSERT INTO seen (id, position) VALUES (?, ?)", (envelope.id, envelope.position)), stop),))
    broker = contextlib.ExitStack()
    broker.enter_context(services.tansu(port=port))
    try:
        if listening == "throughout":
            consumer.start()
        with relay(postgres_database, bootstrap, "test") as first:
            # Given domain events the relay published (which a consumer started later has not applied)
            register(range(0, 150))
            while _positions(database, "relay:ledger" if listening != "throughout" else "ledger:test") < 100:
                time.sleep(0.05)
            # When the relay is killed mid-stream, and the broker restarts with nothing in it
            sender = threading.Thread(target=register, args=(range(150, 300),))
            sender.start()
            services.stop(first, signal.SIGKILL)
            broker.close()
            broker.enter_context(services.tansu(port=port))
        with relay(postgres_database, bootstrap, "test"):
            if listening != "throughout":
                consumer.start()
            sender.join(60)
            expected = store_ids(ledger)
            last = ledger.ledger_events(0, 1_000_000)[-1].position
            deadline = time.monotonic() + 90
            while _positions(database, "ledger:test") < last:
                assert time.monotonic() < deadline, f"the consumer did not reach {last}"
                time.sleep(0.2)
        # Then the consumer saw every event of the store exactly once, in order
        with database.transaction() as cursor:
            seen = [row[0] for row in cursor.execute("SELECT id FROM seen ORDER BY position").all()]
        assert seen == expected
        assert len(expected) == 1 + 300  # the tenant, and its customers
    finally:
        loop.call_soon_threadsafe(stop.set)
        if consumer.is_alive():
            consumer.join(30)
        loop.close()
        broker.close()
        database.close()
        ledger.close()


def _positions(database: Database, name: str) -> int:
    with database.transaction() as cursor:
        row = cursor.execute("SELECT position FROM tally_positions WHERE name = ?", (name,)).one()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("bad", ["a b", "x" * 65, "é"])
def test_ledger_consumers_with_bad_names_are_refused(bad):
    from ops import config
    with pytest.raises(config.ConfigError):
        config.load({"TALLY_LEDGER_CONSUMERS": f"ok,{bad}"})
