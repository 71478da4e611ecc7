"""Fixtures: every ledger test runs on both stores (embedded SQLite and PostgreSQL), over real HTTP.

PostgreSQL comes from TALLY_TEST_POSTGRES_URL (set by `ops/test`); without it the session starts
a throw-away server itself. Each test gets a fresh database and a fresh Tally server on a free port.
"""

import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import httpx
import psycopg
import pytest
import uvicorn

from api.app import create_app
from api.ledger import Ledger
from api.protocol import OneWriteProtocol
from domain.aggregate import Actor
from domain.money import trap_floats
from domain.tenant import TenantSettings
from ops import services

trap_floats()
SETUP = Actor("system:test")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url = os.environ.get("TALLY_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with services.postgres() as started:
        yield started


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    bootstrap = os.environ.get("TALLY_TEST_KAFKA_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    with services.tansu() as started:
        yield started


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:  # noqa: ANN001
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    yield request.getfixturevalue("postgres_database")


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    name = f"tally_{uuid4().hex[:16]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    opened = Ledger(database_url)
    yield opened
    opened.close()


class Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: leave signals to pytest
        pass


@pytest.fixture
def base_url(ledger: Ledger) -> Iterator[str]:
    """Tally served over real HTTP on a free loopback port."""
    port = services.free_port()
    server = Server(uvicorn.Config(create_app(ledger), host="127.0.0.1", port=port, http=OneWriteProtocol,
                                  log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def open_tenant(ledger: Ledger, name: str = "Acme") -> tuple[str, str]:
    """A new tenant and its admin key: (tenant id, secret)."""
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name=name))
    _, secret = ledger.command(ledger.tenants.issue_key, SETUP, tenant.id, "admin")
    return str(tenant.id), secret


def client(base_url: str, secret: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=10)


@pytest.fixture
def admin(ledger: Ledger, base_url: str) -> Iterator[httpx.Client]:
    """An HTTP client holding the admin key of a fresh tenant."""
    _, secret = open_tenant(ledger)
    with client(base_url, secret) as http:
        yield http


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem of `status`; with `field`, its first error names that field."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    if field is not None:
        assert body["errors"][0]["field"] == field, body
    return body


def created(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


def refused(response: httpx.Response, status: int = 422) -> list[str]:
    """The fields a problem+json refusal names."""
    return [error["field"] for error in assert_problem(response, status).get("errors", [])]
