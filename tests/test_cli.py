"""The `tally` command line, run as real processes: tenants, keys, and `tally serve` with its
bootstrap (the first tenant's admin key, TALLY_API_KEY). Each test runs on both stores.

The CLI writes through its own process and catches the read models up itself, so a server on the
same store (the `base_url` fixture, or a `tally serve` started here) sees its keys at once.
"""

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import client

from api.ledger import store_env
from ops.services import free_port
from projections.store import Database

ROOT = Path(__file__).resolve().parents[1]
TALLY = ROOT / ".venv" / "bin" / "tally"
KEY = r"tly_[afrip]_[0-9A-Za-z]{28}"
START_SECONDS = 30


def tally_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of a `tally` process on this store: SQLite through TALLY_DATA_DIR (the
    default file name is the fixture's), PostgreSQL through TALLY_DATABASE_URL. No inherited TALLY_*."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("TALLY_")}
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        assert path.name == "events.sqlite", database_url
        env["TALLY_DATA_DIR"] = str(path.parent)
    else:
        env["TALLY_DATABASE_URL"] = database_url
    return {**env, **settings}


def tally(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `tally ARGS` to its end (a `serve` that should have refused to start is killed at the timeout)."""
    return subprocess.run([str(TALLY), *args], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def printed(pattern: str, output: str) -> str:
    """The one value `pattern` (with one group) finds on a line of its own in `output`."""
    found = re.findall(rf"^{pattern}$", output, re.MULTILINE)
    assert len(found) == 1, (pattern, output)
    return found[0]


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def stop(self, how: signal.Signals = signal.SIGTERM) -> bool:
        """Stop it as an operator would (SIGTERM from a supervisor, SIGINT from Ctrl-C) and wait.

        True when it shut down by itself, without a traceback: status 0, or death by that same
        signal (uvicorn re-raises the signal it caught once it has shut down gracefully)."""
        assert self.process.poll() is None, "the server had already exited"
        self.process.send_signal(how)
        try:
            status = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False
        return status in (0, -how) and "Traceback" not in self.stderr.read_text()


@contextmanager
def serving(env: dict[str, str], folder: Path) -> Iterator[Server]:
    """`tally serve` as a real process on a free port; stopped (and waited for) on the way out."""
    port = free_port()
    stdout, stderr = folder / f"serve-{port}.out", folder / f"serve-{port}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:  # files, not pipes: output can never block it
        process = subprocess.Popen(
            [str(TALLY), "serve"], env={**env, "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port)}, cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
        )
    server = Server(process, f"http://127.0.0.1:{port}", stdout, stderr)
    try:
        _wait_until_healthy(server)
        yield server
    finally:
        if process.poll() is None:
            server.stop()


def _wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"tally serve exited:\n{server.output()}{server.stderr.read_text()}"
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"tally serve did not answer /healthz in {START_SECONDS}s:\n{server.stderr.read_text()}")


def admin_key_lines(output: str) -> list[str]:
    return re.findall(r"^Admin API key: (.*)$", output, re.MULTILINE)


# tally tenants create / keys create / keys revoke


def test_tenants_create_prints_the_tenant_and_an_admin_key_that_works(database_url, base_url):
    # Given a store, served over HTTP
    env = tally_env(database_url)
    # When an operator opens a tenant from the command line
    done = tally(env, "tenants", "create", "Acme Corp")
    # Then it prints the tenant's id and its admin key
    assert done.returncode == 0, done.stderr
    tenant_id = printed(r"Tenant: (ten_[0-9a-f]{32})", done.stdout)
    secret = printed(rf"Admin API key: ({KEY})", done.stdout)
    assert secret.startswith("tly_a_")
    # And the key reads that tenant over HTTP, and may manage its keys
    with client(base_url, secret) as admin:
        tenant = admin.get("/v1/tenant")
        assert tenant.status_code == 200, tenant.text
        assert tenant.json()["id"] == tenant_id and tenant.json()["name"] == "Acme Corp"
        assert [key["role"] for key in admin.get("/v1/api-keys").json()["data"]] == ["admin"]


def test_keys_create_prints_a_working_key_of_the_role(database_url, base_url):
    # Given a tenant opened from the command line
    env = tally_env(database_url)
    opened = tally(env, "tenants", "create", "Acme")
    tenant_id = printed(r"Tenant: (ten_\w+)", opened.stdout)
    admin_secret = printed(rf"Admin API key: ({KEY})", opened.stdout)
    # When a finance key is created for it
    done = tally(env, "keys", "create", "--tenant", tenant_id, "--role", "finance")
    # Then its id and secret are printed
    assert done.returncode == 0, done.stderr
    key_id = printed(r"Key id: (key_[0-9a-f]{32})", done.stdout)
    secret = printed(rf"API key: ({KEY})", done.stdout)
    assert secret.startswith("tly_f_")
    with client(base_url, secret) as finance, client(base_url, admin_secret) as admin:
        # And the key reads the tenant, but as finance may not create keys
        assert finance.get("/v1/tenant").json()["id"] == tenant_id
        assert finance.post("/v1/api-keys", json={"role": "admin"}).status_code == 403
        # And the admin sees it, made by the CLI
        key = admin.get(f"/v1/api-keys/{key_id}").json()
        assert (key["role"], key["prefix"], key["created_by"]) == ("finance", secret[:12], "system:cli")


def test_keys_create_binds_a_portal_key_to_a_customer(database_url, base_url):
    # Given a tenant with the customer acme, registered over HTTP
    env = tally_env(database_url)
    opened = tally(env, "tenants", "create", "Acme")
    tenant_id = printed(r"Tenant: (ten_\w+)", opened.stdout)
    with client(base_url, printed(rf"Admin API key: ({KEY})", opened.stdout)) as admin:
        registered = admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"})
        assert registered.status_code == 201, registered.text
        # When a portal key is created for acme
        done = tally(env, "keys", "create", "--tenant", tenant_id, "--role", "portal", "--customer", "acme")
        # Then it is printed, and bound to acme
        assert done.returncode == 0, done.stderr
        key_id = printed(r"Key id: (key_[0-9a-f]{32})", done.stdout)
        secret = printed(rf"API key: ({KEY})", done.stdout)
        assert secret.startswith("tly_p_")
        assert admin.get(f"/v1/api-keys/{key_id}").json()["customer"] == "acme"
    # And it signs in (no 401), though a portal key may not read the tenant
    with client(base_url, secret) as portal:
        assert portal.get("/v1/tenant").status_code == 403


def test_keys_create_refuses_a_portal_key_without_a_known_customer(database_url):
    # Given a tenant without customers
    env = tally_env(database_url)
    tenant_id = printed(r"Tenant: (ten_\w+)", tally(env, "tenants", "create", "Acme").stdout)
    for extra, message in (((), "customer: a portal key is bound to one customer"),
                           (("--customer", "globex"), "customer: no customer 'globex'")):
        # When a portal key is asked for with no customer, or an unknown one
        done = tally(env, "keys", "create", "--tenant", tenant_id, "--role", "portal", *extra)
        # Then the CLI fails with a message naming the customer, and prints no key
        assert done.returncode != 0
        assert message in done.stderr and "Traceback" not in done.stderr
        assert "API key" not in done.stdout


def test_keys_revoke_makes_the_key_fail_at_once(database_url, base_url):
    # Given a working readonly key made from the command line
    env = tally_env(database_url)
    tenant_id = printed(r"Tenant: (ten_\w+)", tally(env, "tenants", "create", "Acme").stdout)
    made = tally(env, "keys", "create", "--tenant", tenant_id, "--role", "readonly")
    key_id = printed(r"Key id: (key_\w+)", made.stdout)
    with client(base_url, printed(rf"API key: ({KEY})", made.stdout)) as readonly:
        assert readonly.get("/v1/tenant").status_code == 200
        # When it is revoked from the command line
        done = tally(env, "keys", "revoke", key_id)
        # Then the CLI says so, and the key's next request gets 401
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"Revoked {key_id}"
        assert readonly.get("/v1/tenant").status_code == 401
    # And revoking it again fails, saying why
    again = tally(env, "keys", "revoke", key_id)
    assert again.returncode != 0 and "already revoked" in again.stderr and "Traceback" not in again.stderr


def test_keys_revoke_refuses_an_unknown_or_malformed_key_id(database_url):
    # Given a store with one tenant (whose id is not a key id)
    env = tally_env(database_url)
    tenant_id = printed(r"Tenant: ten_(\w+)", tally(env, "tenants", "create", "Acme").stdout)
    for key_id, message in ((f"key_{'0' * 32}", "no API key"), (f"key_{tenant_id}", "no API key"),
                            ("tly_a_not_an_id", "is not a key id")):
        # When an operator revokes a key that does not exist, or gives something else than a key id
        done = tally(env, "keys", "revoke", key_id)
        # Then the CLI fails with a clear message
        assert done.returncode != 0
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


# tally serve


def test_the_first_start_prints_one_admin_key_and_a_restart_keeps_the_data_without_a_new_key(
    database_url, tmp_path
):
    # Given an empty store
    env = tally_env(database_url)
    # When tally serve starts for the first time
    with serving(env, tmp_path) as first:
        # Then it prints exactly one admin key, which reads the first tenant
        (secret,) = admin_key_lines(first.output())
        assert re.fullmatch(KEY, secret) and secret.startswith("tly_a_")
        with client(first.base_url, secret) as admin:
            tenant = admin.get("/v1/tenant")
            assert tenant.status_code == 200, tenant.text
            registered = admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"})
            assert registered.status_code == 201, registered.text
        # And it stops cleanly on Ctrl-C
        assert first.stop(signal.SIGINT)
    # When it starts again on the same store
    with serving(env, tmp_path) as second:
        # Then it prints no key, and the first key still reads the same tenant and its customer
        assert admin_key_lines(second.output()) == []
        assert "tly_" not in second.output()
        with client(second.base_url, secret) as admin:
            assert admin.get("/v1/tenant").json() == tenant.json()
            assert admin.get("/v1/customers/acme").json() == registered.json()
            assert len(admin.get("/v1/api-keys").json()["data"]) == 1
        # And it stops cleanly when its supervisor asks
        assert second.stop(signal.SIGTERM)


def test_tally_api_key_is_an_admin_key_of_the_first_tenant_reinstated_on_every_start(database_url, tmp_path):
    # Given an empty store and an operator's own key in TALLY_API_KEY
    operator_key = "operator-" + os.urandom(12).hex()
    env = tally_env(database_url, TALLY_API_KEY=operator_key)
    # When tally serve starts for the first time
    with serving(env, tmp_path) as first:
        # Then it makes no key of its own, and never echoes the operator's
        assert admin_key_lines(first.output()) == []
        assert operator_key not in first.output() + first.stderr.read_text()
        with client(first.base_url, operator_key) as admin:
            # And the operator's key is the admin key of the first tenant, listed by a short prefix
            assert admin.get("/v1/tenant").status_code == 200
            (key,) = admin.get("/v1/api-keys").json()["data"]
            assert (key["role"], key["prefix"]) == ("admin", operator_key[:4])
            # When the key is revoked over HTTP
            assert admin.delete(f"/v1/api-keys/{key['id']}").status_code == 200
            # Then it is refused at once
            assert admin.get("/v1/tenant").status_code == 401
    # When tally serve starts again with the same TALLY_API_KEY
    with serving(env, tmp_path) as second:
        # Then the key is reinstated: it works again, and is still the one key
        with client(second.base_url, operator_key) as admin:
            assert admin.get("/v1/tenant").status_code == 200
            (again,) = admin.get("/v1/api-keys").json()["data"]
            assert again["id"] == key["id"] and again["revoked"] is False
        assert admin_key_lines(second.output()) == []


def test_tally_api_key_joins_the_tenant_opened_first(database_url, tmp_path):
    # Given a store whose first tenant was opened from the command line, and then a second one
    env = tally_env(database_url)
    first_tenant = printed(r"Tenant: (ten_\w+)", tally(env, "tenants", "create", "First").stdout)
    tally(env, "tenants", "create", "Second")
    operator_key = "operator-" + os.urandom(12).hex()
    # When tally serve starts with TALLY_API_KEY
    with serving({**env, "TALLY_API_KEY": operator_key}, tmp_path) as server:
        # Then it opens no tenant and prints no key, and the operator's key reads the first tenant
        assert admin_key_lines(server.output()) == []
        with client(server.base_url, operator_key) as admin:
            assert admin.get("/v1/tenant").json()["id"] == first_tenant


def test_tally_api_key_taken_by_another_key_stops_serve_with_a_clear_message(database_url, tmp_path):
    # Given a finance key of the first tenant
    env = tally_env(database_url)
    tenant_id = printed(r"Tenant: (ten_\w+)", tally(env, "tenants", "create", "Acme").stdout)
    made = tally(env, "keys", "create", "--tenant", tenant_id, "--role", "finance")
    finance_key = printed(rf"API key: ({KEY})", made.stdout)
    # When tally serve is started with that key as TALLY_API_KEY
    done = tally({**env, "TALLY_API_KEY": finance_key, "TALLY_PORT": str(free_port())}, "serve")
    # Then it refuses to start, saying why (a finance key is not made an admin), without a traceback
    assert done.returncode != 0
    assert "TALLY_API_KEY" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("TALLY_PORT", "http", "TALLY_PORT must be a port number, not 'http'"),
    ("TALLY_PORT", "0", "TALLY_PORT must be a port number, not '0'"),
    ("TALLY_PORT", "65536", "TALLY_PORT must be a port number, not '65536'"),
    ("TALLY_PORT", "-1", "TALLY_PORT must be a port number, not '-1'"),
    ("TALLY_API_KEY", "too-short", "TALLY_API_KEY must be at least 16 characters"),
    ("TALLY_API_KEY", "tly_a_" + "x" * 28, "TALLY_API_KEY starts with tly_ but is not a Tally key"),
    ("TALLY_DATABASE_URL", "mysql://db/tally", "TALLY_DATABASE_URL must start with sqlite:/// or postgresql://"),
    ("TALLY_WORKERS", "0", "TALLY_WORKERS must be a whole number from 1 to 64, not '0'"),
    ("TALLY_WORKERS", "two", "TALLY_WORKERS must be a whole number from 1 to 64, not 'two'"),
])
def test_a_bad_setting_stops_serve_with_a_message_naming_it(tmp_path, setting, value, message):
    # Given a setting with a bad value
    env = tally_env(f"sqlite:///{tmp_path / 'events.sqlite'}", **{setting: value})
    # When tally serve starts
    done = tally(env, "serve")
    # Then it exits at once with an error naming the setting, and has touched no store
    assert done.returncode != 0
    assert f"tally: configuration error: {message}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "events.sqlite").exists()


def test_serve_runs_the_billing_clock_on_its_own(database_url, tmp_path):
    # Given a server whose clock ticks every 0.2 s, and a subscription that started a year ago
    env = tally_env(database_url, TALLY_API_KEY="clock-test-admin-key", TALLY_BILLING_INTERVAL_SECONDS="0.2")
    with serving(env, tmp_path) as server, httpx.Client(
            base_url=server.base_url, headers={"Authorization": "Bearer clock-test-admin-key"}, timeout=10) as api:
        for path, body in [
            ("/v1/plans", {"code": "pro", "name": "Pro", "currency": "USD", "interval": "year"}),
            ("/v1/plans/pro/versions", {"prices": [{"type": "flat", "currency": "USD", "amount": "120.00",
                                                    "pay_in": "advance"}]}),
            ("/v1/customers", {"external_id": "acme", "name": "Acme", "currency": "USD"}),
            ("/v1/subscriptions", {"customer": "acme", "plan_code": "pro", "start_at": "2025-01-01T00:00:00Z",
                                   "billing_anchor": "calendar"}),
        ]:
            assert api.post(path, json=body).status_code == 201
        # When a moment passes
        deadline, found = time.monotonic() + 15, []
        while time.monotonic() < deadline and (len(found) < 3 or any(i["status"] == "draft" for i in found)):
            found = api.get("/v1/invoices", params={"customer": "acme"}).json()["data"]
            time.sleep(0.1)
    # Then the clock has billed 2025 (advance and closing, finalized) and 2026 in advance, nobody asking
    assert sorted((i["kind"], i["period_start"][:4], i["status"]) for i in found) == [
        ("advance", "2025", "finalized"), ("advance", "2026", "finalized"), ("closing", "2025", "finalized")]


def test_serve_keeps_a_busy_customer_s_ended_hours_on_its_own(database_url, tmp_path):
    # Given a server whose jobs run every 0.2 s, a meter, and 1,200 events of acme's in an hour that has ended
    env = tally_env(database_url, TALLY_API_KEY="hours-test-admin-key", TALLY_BILLING_INTERVAL_SECONDS="0.2")
    hour = (datetime.now(UTC) - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    events = [{"event_id": f"e{n}", "customer": "acme", "event_name": "llm",
               "timestamp": f"{hour + timedelta(seconds=n):%FT%TZ}", "properties": {"tokens": 2}} for n in range(1_200)]
    _, views_url, _ = store_env(database_url)
    with serving(env, tmp_path) as server, httpx.Client(
            base_url=server.base_url, headers={"Authorization": "Bearer hours-test-admin-key"}, timeout=10) as api:
        assert api.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                            "aggregation": "sum", "field": "tokens"}).status_code == 201
        assert api.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}).status_code \
            == 201
        assert api.post("/v1/events/batch", json={"events": events}).json()["accepted"] == 1_200
        # When a moment passes, nobody reading a report
        views, deadline, kept = Database(views_url), time.monotonic() + 15, []
        try:
            while time.monotonic() < deadline and not kept:
                kept = views.query("SELECT customer, start_us, end_us FROM tally_usage_hours")
                time.sleep(0.1)
        finally:
            views.close()
        # Then acme's busy hour is kept (nobody else's), and reads what its events give
        start_us = int(hour.timestamp()) * 10**6
        assert {customer for customer, _, _ in kept} == {"acme"}
        assert any(low <= start_us and start_us + 3_600 * 10**6 <= high for _, low, high in kept), kept
        answer = api.get("/v1/customers/acme/usage", params={"meter_code": "tokens", "from": f"{hour:%FT%TZ}",
                                                              "to": f"{hour + timedelta(hours=1):%FT%TZ}"})
        assert answer.json()["total"] == "2400"


def listeners(port: int) -> int:
    """How many sockets listen on the loopback TCP port (from /proc/net/tcp: state 0A is LISTEN)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


def test_tally_workers_serve_the_port_from_several_processes_that_stop_together(database_url, tmp_path):
    # Given tally serve with TALLY_WORKERS=3
    env = tally_env(database_url, TALLY_API_KEY="workers-test-admin-key", TALLY_WORKERS="3")
    with serving(env, tmp_path) as server:
        port = int(server.base_url.rpartition(":")[2])
        # Then three processes listen on its port (the other two a moment after the first), and the
        # kernel spreads connections among them
        deadline = time.monotonic() + START_SECONDS
        while listeners(port) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listeners(port) == 3
        headers = {"Authorization": "Bearer workers-test-admin-key"}
        created = httpx.post(f"{server.base_url}/v1/customers", headers=headers, timeout=10,
                             json={"external_id": "acme", "name": "Acme", "currency": "USD"})
        assert created.status_code == 201, created.text
        # And what one of them wrote, each reads at once, on fresh connections (no keep-alive)
        for _ in range(30):
            found = httpx.get(f"{server.base_url}/v1/customers/acme", headers=headers, timeout=10)
            assert found.status_code == 200, found.text
        # When it is stopped, all of them stop, cleanly
        assert server.stop()
        deadline = time.monotonic() + 10
        while listeners(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listeners(port) == 0
