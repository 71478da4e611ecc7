"""ops.services really starts, serves and stops PostgreSQL and Tansu."""

import socket
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
