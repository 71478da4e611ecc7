"""ops.services really starts, serves and stops PostgreSQL and Tansu."""

import socket
import threading
from pathlib import Path

import psycopg
import pytest

from ops.services import free_port, postgres, tansu


def accepts_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def test_free_port_is_bindable_on_loopback():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_postgres_serves_queries_and_is_removed_afterwards():
    with postgres() as url:
        assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/postgres")
        with psycopg.connect(url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            datadir = Path(conn.execute("show data_directory").fetchone()[0])
        assert datadir.is_dir()
    assert not datadir.exists()
    assert not accepts_connections(url.split("@", 1)[1].split("/", 1)[0])


def test_postgres_is_stopped_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with postgres() as url:
            with psycopg.connect(url) as conn:
                datadir = Path(conn.execute("show data_directory").fetchone()[0])
            raise RuntimeError("boom")
    assert not datadir.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_tansu_accepts_connections_and_is_closed_afterwards():
    with tansu() as address:
        assert address.startswith("127.0.0.1:")
        assert accepts_connections(address)
    assert not accepts_connections(address)


def test_tansu_is_stopped_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with tansu() as address:
            raise RuntimeError("boom")
    assert not accepts_connections(address)


def test_a_ledger_on_postgres_holds_a_connection_an_application_and_never_more_than_32(postgres_database):
    from concurrent.futures import ThreadPoolExecutor

    from api.ledger import Ledger
    from domain.aggregate import Actor
    from domain.tenant import TenantSettings

    def held() -> int:
        with psycopg.connect(postgres_database, autocommit=True) as connection:
            return connection.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND pid <> pg_backend_pid()").fetchone()[0]

    ledger = Ledger(postgres_database)
    try:
        # Given a ledger (six event-sourced applications and its read models), idle
        idle = held()
        # When 16 threads open tenants at once, and a thread counts the connections meanwhile
        peak, done = [idle], threading.Event()

        def count() -> None:
            while not done.is_set():
                peak.append(held())

        counter = threading.Thread(target=count)
        counter.start()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: ledger.command(ledger.tenants.open_tenant, Actor("test:setup"),
                                                    TenantSettings(name=f"t{n}")), range(64)))
        done.set()
        counter.join()
        # Then it held one connection an application and a few for its read models, and 32 at most under load
        assert idle <= 16, idle
        assert max(peak) <= 32, max(peak)
    finally:
        ledger.close()
