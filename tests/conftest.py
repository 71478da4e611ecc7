"""Fixtures: every ledger test runs on both stores (embedded SQLite and PostgreSQL), over real HTTP.

PostgreSQL comes from TALLY_TEST_POSTGRES_URL (set by `ops/test`); without it the session starts
a throw-away server itself. Each test gets a fresh database and a fresh Tally server on a free port.
"""

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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


WALLET = {"customer": "acme", "name": "AI credits", "credit_unit": "credit", "currency": "USD",
          "conversion_rate": "0.01"}


def month_of_business(admin, ledger) -> dict:
    """A month of business: a plan with an advance fee and tokens, a customer's usage, January's
    invoices finalized by the clock, a wallet of 105 grants (snapshotted at 100) and a paid top-up."""
    ledger.subscriptions.clock = lambda: datetime(2026, 1, 20, tzinfo=UTC)
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}))
    created(admin.post("/v1/plans/pro/versions", json={"prices": [
        {"type": "flat", "currency": "USD", "amount": "49.99", "pay_in": "advance"},
        {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "0.0015"}]}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD",
                                              "tax_rate": "0.2"}))
    created(admin.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "pro",
                                                  "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    events = [{"event_id": f"e-{n}", "customer": "acme", "event_name": "llm",
               "timestamp": f"2026-01-{1 + n % 19:02d}T10:00:00Z", "properties": {"tokens": 1000 + n}}
              for n in range(300)]
    assert admin.post("/v1/events/batch", json={"events": events}).json()["accepted"] == 300
    wallet = created(admin.post("/v1/wallets", json=WALLET))
    for _ in range(105):
        created(admin.post(f"/v1/wallets/{wallet['id']}/grants", json={"amount": "1.5", "kind": "paid"}))
    bought = created(admin.post(f"/v1/wallets/{wallet['id']}/topups", json={"amount": "100"}))
    assert admin.post(f"/v1/invoices/{bought['invoice_id']}/pay", json={}).status_code == 200
    ledger.close_periods(datetime(2026, 2, 3, tzinfo=UTC))
    ledger.usage_runner.catch_up()
    invoices = admin.get("/v1/invoices", params={"customer": "acme"}).json()["data"]
    assert sorted(i["status"] for i in invoices) == ["finalized", "finalized", "finalized", "paid"]
    return {"wallet": wallet, "invoices": invoices}
