"""The usage read model, distributed: `tally relay` fills Kafka `tally.usage` from the usage log and
`tally worker` (Faust) applies it; real PostgreSQL, the real Tansu broker, real processes.

- Both drivers (the in-process runner and the Faust worker) build the same read model from the same
  events, and that model is what a replay of the log gives.
- A broker that comes back empty and a worker killed mid-stream lose nothing: the read model and
  the totals converge to a replay of the log.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
from conftest import SETUP

from api.ledger import Ledger
from api.usage import decode_event as EVENT
from domain.tenant import TenantSettings
from ops import services
from ops.verify import verify
from projections import store, usage_readings
from projections.drivers.inprocess import UsageRunner
from projections.store import Database, lock_position, positions, save_position
from projections.usage_log import UsageLog
from projections.usage_readings import PARTITIONS, position_name

KEY = "distributed-test-admin-key"
TALLY = os.path.join(os.path.dirname(sys.executable), "tally")
CUSTOMERS = [f"cus-{n}" for n in range(7)]
DAY = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}


def events(batch: int, size: int) -> list[dict]:
    return [{"event_id": f"{batch}-{n}", "customer": CUSTOMERS[n % len(CUSTOMERS)], "event_name": "call",
             "timestamp": f"2026-11-01T{n % 24:02d}:00:00Z", "properties": {"tokens": n % 10}}
            for n in range(size)]


LOGS: list[Path] = []  # every process's output, shown when a wait fails


def start(command: str, env: dict[str, str]) -> subprocess.Popen:
    """`tally COMMAND` as a real process, its output in a file of its own (see `LOGS`)."""
    handle, name = tempfile.mkstemp(prefix=f"tally-{command}-", suffix=".log")
    LOGS.append(Path(name))
    try:
        return subprocess.Popen([TALLY, command], env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        os.close(handle)


@pytest.fixture(autouse=True, scope="module")
def _remove_logs() -> Iterator[None]:
    yield
    for log in LOGS:
        log.unlink(missing_ok=True)


def outputs() -> str:
    """The last lines each process started here wrote."""
    return "\n".join(f"--- {log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                     for log in LOGS if log.exists())


@contextlib.contextmanager
def tally(command: str, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`tally COMMAND` as a real process; stopped (then killed) on the way out."""
    process = start(command, env)
    try:
        yield process
    finally:
        services.stop(process)


def snapshot(database: Database) -> list[tuple]:
    with database.transaction() as cursor:
        return cursor.execute(f"SELECT {usage_readings.COLUMNS} FROM tally_usage_readings "
                              f"ORDER BY {usage_readings.KEY}").all()


def replayed(usage: UsageLog) -> list[tuple]:
    """The read model a replay of the whole log gives, computed apart from both drivers."""
    puts, _ = usage_readings.reduce(usage.entries(0, 10_000_000))
    return sorted(puts.values())


def wait_applied(database: Database, usage: UsageLog, seconds: float) -> None:
    """Until every partition's position has reached the log's last entry."""
    deadline = time.monotonic() + seconds
    last = usage.last_position()
    names = [position_name(p) for p in range(PARTITIONS)]
    while time.monotonic() < deadline:
        with database.transaction() as cursor:
            found = dict(cursor.execute("SELECT name, position FROM tally_positions").all())
        if all(found.get(name, 0) >= last for name in names):
            return
        time.sleep(0.1)
    raise AssertionError(f"the worker did not reach position {last}: {found}\n{outputs()}")


def reset(database: Database) -> None:
    with database.transaction(write=True) as cursor:
        cursor.execute("DELETE FROM tally_usage_readings")
        cursor.execute("DELETE FROM tally_positions WHERE name <> 'documents'")


def record(ledger: Ledger, tenant: str, batch: int, size: int) -> None:
    decoded = [EVENT.decode(msgspec.json.encode(e)) for e in events(batch, size)]
    ledger.usage.append(tenant, decoded, datetime.now(UTC))


def test_the_runner_and_the_worker_build_the_read_model_a_replay_gives(postgres_database, kafka_bootstrap):
    # Given events, some voided in the batch after theirs and some in the same round of appends
    ledger = Ledger(postgres_database)
    try:
        tenant = str(ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Acme")).id)
        for batch in range(3):
            record(ledger, tenant, batch, 400)
        ledger.usage.void(tenant, CUSTOMERS[0], ["0-0", "0-7", "2-14", "never"], "key_test", datetime.now(UTC))
        record(ledger, tenant, 3, 100)
        expected = replayed(ledger.usage)
        # When the in-process runner applies the log
        ledger.usage_runner.catch_up()
        by_runner = snapshot(ledger.database)
        # And, from scratch, the relay and the Faust worker do
        reset(ledger.database)
        env = {"TALLY_DATABASE_URL": postgres_database, "TALLY_KAFKA_BOOTSTRAP": kafka_bootstrap,
               "TALLY_RELAY_STALL_SECONDS": "1"}
        with tally("relay", env), tally("worker", env):
            wait_applied(ledger.database, ledger.usage, 60)
        by_worker = snapshot(ledger.database)
        # And `tally audit verify` of the distributed store (its partitions' positions) finds nothing
        distributed = Ledger(postgres_database, distributed=True)
        try:
            assert list(verify(distributed)) == []
        finally:
            distributed.close()
    finally:
        ledger.close()
    # Then both are the replay of the log, row for row: 1,300 events less the 3 voided
    assert len(expected) == 1_297
    assert [tuple(row) for row in by_runner] == expected
    assert [tuple(row) for row in by_worker] == expected


def test_a_broker_that_comes_back_empty_and_a_killed_worker_lose_nothing(postgres_database):
    port, api_port = services.free_port(), services.free_port()
    base = {"TALLY_DATABASE_URL": postgres_database, "TALLY_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
            "TALLY_RELAY_STALL_SECONDS": "1", "TALLY_API_KEY": KEY, "TALLY_PORT": str(api_port)}
    url = f"http://127.0.0.1:{api_port}"
    broker = contextlib.ExitStack()
    broker.enter_context(services.tansu(port=port))
    try:
        with tally("serve", base), tally("relay", base), httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as api:
            _wait_up(api)
            assert api.post("/v1/meters", json={"code": "calls", "name": "Calls", "event_name": "call",
                                                "aggregation": "count"}).status_code == 201
            sender = threading.Thread(target=_send, args=(api, range(0, 30)))
            worker = start("worker", base)
            try:
                # Given usage flowing through the relay to a worker
                sender.start()
                time.sleep(4)
                # When the worker is killed mid-stream, and the broker restarts with nothing in it
                services.stop(worker, signal.SIGKILL)
                broker.close()
                broker.enter_context(services.tansu(port=port))
                worker = start("worker", base)
                sender.join(60)
                assert not sender.is_alive()
                voided = api.post("/v1/events/void", json={"customer": CUSTOMERS[1], "event_ids": ["3-1", "9-8"]})
                assert voided.json()["voided"] == 2
                database = Database(postgres_database)
                usage = UsageLog(database)
                try:
                    wait_applied(database, usage, 90)
                    # Then the read model is the replay of the log, and so are the totals
                    assert [tuple(row) for row in snapshot(database)] == replayed(usage)
                    assert len(replayed(usage)) == 30 * 200 - 2
                finally:
                    database.close()
            finally:
                services.stop(worker)
            for customer in CUSTOMERS:  # known only now: their events count all the same
                assert api.post("/v1/customers", json={"external_id": customer, "name": customer,
                                                       "currency": "USD"}).status_code == 201
            totals = [api.get(f"/v1/customers/{c}/usage", params={"meter_code": "calls", **DAY}).json()["total"]
                      for c in CUSTOMERS]
            assert sum(int(total) for total in totals) == 30 * 200 - 2
    finally:
        broker.close()


def _send(api: httpx.Client, batches: range) -> None:
    for batch in batches:
        answer = api.post("/v1/events/batch", json={"events": events(batch, 200)})
        assert answer.status_code == 202, answer.text
        time.sleep(0.25)


def _wait_up(api: httpx.Client) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if api.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError("tally serve did not come up")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_dropped_read_model_rebuilt_by_replay_is_the_live_one(kind, tmp_path, request):
    url = f"sqlite:///{tmp_path / 'events.sqlite'}" if kind == "sqlite" else request.getfixturevalue(
        "postgres_database")
    ledger = Ledger(url)
    try:
        tenant = str(ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Acme")).id)
        # Given a live read model, kept up batch by batch while usage and voids arrive
        for batch in range(4):
            record(ledger, tenant, batch, 300)
            ledger.usage_runner.catch_up()
            ledger.usage.void(tenant, CUSTOMERS[batch], [f"{batch}-{batch}"], "key_test", datetime.now(UTC))
        ledger.usage_runner.catch_up()
        live = snapshot(ledger.database)
        # When it is dropped and rebuilt from the log
        reset(ledger.database)
        UsageRunner(ledger.usage, ledger.database).catch_up()
        # Then the rebuild is the live model, row for row
        assert snapshot(ledger.database) == live
        assert len(live) == 4 * 300 - 4
        # And when its position is lost but not its rows (but for the last 50), the log applied again over
        # them gives the same model: rows there already are kept, the missing ones come back
        with ledger.database.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM tally_usage_readings WHERE position > ?", (ledger.usage.last_position() - 50,))
            cursor.execute("DELETE FROM tally_positions WHERE name <> 'documents'")
        assert len(snapshot(ledger.database)) < len(live)
        UsageRunner(ledger.usage, ledger.database).catch_up()
        assert snapshot(ledger.database) == live
    finally:
        ledger.close()


OLD_COLUMNS = "tenant_id, customer, event_name, timestamp_us, event_id, position, properties"


def old_readings(key_end: str) -> str:
    """The read model's table as it was before it was keyed by the hour (by the time, then `key_end`)."""
    return ("CREATE TABLE IF NOT EXISTS tally_usage_readings (tenant_id TEXT NOT NULL, customer TEXT NOT NULL, "
            "event_name TEXT NOT NULL, timestamp_us BIGINT NOT NULL, event_id TEXT NOT NULL, position BIGINT NOT NULL, "
            f"properties TEXT NOT NULL, PRIMARY KEY (tenant_id, customer, event_name, timestamp_us, {key_end})) "
            "WITHOUT ROWID")


@pytest.mark.parametrize("key_end", ["event_id", "position"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_read_model_keyed_by_time_is_re_keyed_by_the_hour_with_its_rows_and_positions(kind, key_end, tmp_path,
                                                                                          request):
    url = f"sqlite:///{tmp_path / 'views.sqlite'}" if kind == "sqlite" else request.getfixturevalue("postgres_database")
    database = Database(url)
    try:
        # Given a read model from before it was keyed by the hour: rows sharing a time, one before 1970, and its
        # position
        database.migrate([*store.SCHEMA, old_readings(key_end)])
        rows = [("t", "acme", "llm", 5, "b", 1, "{}"), ("t", "acme", "llm", 5, "a", 2, '{"n":1}'),
                ("t", "zeta", "llm", -3_599_999_999, "c", 3, "{}"), ("t", "zeta", "llm", 7_200_000_000, "d", 4, "{}")]
        with database.transaction(write=True) as cursor:
            cursor.execute_many(f"INSERT INTO tally_usage_readings ({OLD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            lock_position(cursor, usage_readings.IN_PROCESS)
            save_position(cursor, usage_readings.IN_PROCESS, 4)
        assert _key(database) == ["tenant_id", "customer", "event_name", "timestamp_us", key_end]
        # When it is opened (twice: the second finds nothing to do)
        usage_readings.migrate(database)
        usage_readings.migrate(database)
        # Then it is keyed by the hour (floored, as Python floors it), then the position, with the same rows and
        # position
        assert _key(database) == ["tenant_id", "customer", "event_name", "hour_us", "position"]
        hour = usage_readings.HOUR
        assert sorted(map(tuple, snapshot(database))) == sorted(
            (t, c, n, at - at % hour, p, at, e, props) for t, c, n, at, e, p, props in rows)
        assert [row[3] for row in sorted(map(tuple, snapshot(database)), key=lambda row: row[4])] == [
            0, 0, -hour, 2 * hour]
        assert positions(database, [usage_readings.IN_PROCESS]) == [4]
    finally:
        database.close()


def _key(database: Database) -> list[str]:
    with database.transaction() as cursor:
        return usage_readings._key_columns(cursor)  # noqa: SLF001


def test_beside_the_server_the_runner_keeps_the_read_model_up(ledger, admin):
    # Given a server (its usage runner follows the log in a process of its own)
    # When usage is sent, and one event voided
    for batch in range(3):
        assert admin.post("/v1/events/batch", json={"events": events(batch, 100)}).status_code == 202
    assert admin.post("/v1/events/void", json={"customer": CUSTOMERS[2], "event_ids": ["1-2"]}).json()["voided"] == 1
    # Then, without anyone asking, the read model reaches the log's end, and is its replay
    deadline, last = time.monotonic() + 15, ledger.usage.last_position()
    while _applied(ledger.database) < last:
        assert time.monotonic() < deadline, "the usage runner did not catch up"
        time.sleep(0.05)
    assert [tuple(row) for row in snapshot(ledger.database)] == replayed(ledger.usage)
    assert len(snapshot(ledger.database)) == 299


def _applied(database: Database) -> int:
    with database.transaction() as cursor:
        row = cursor.execute("SELECT position FROM tally_positions WHERE name = 'usage'").one()
    return int(row[0]) if row else 0
