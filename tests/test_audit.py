"""The audit trail: `GET /v1/audit/events` shows a tenant's domain events as recorded (position,
time, tenant, actor, Idempotency-Key), a page at a time by position, on both stores."""

import time
from datetime import UTC, datetime
from uuid import UUID

import orjson
from conftest import (
    WALLET,
    assert_problem,
    client,
    created,
    month_of_business,
    open_tenant,
)

from projections import audit
from projections.views import private_id


def events(http, **query) -> list[dict]:
    """Every event the audit shows for this query, page after page."""
    found, after = [], 0
    while True:
        answer = http.get("/v1/audit/events", params={**query, "limit": 3, "starting_after": after})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        found += page["data"]
        if not page["has_more"]:
            return found
        after = page["data"][-1]["position"]


def test_each_event_is_shown_as_recorded_with_its_actor_and_idempotency_key(admin):
    key = admin.get("/v1/api-keys").json()["data"][0]["id"]
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"},
                       headers={"Idempotency-Key": "create-acme-1"}))
    wallet = created(admin.post("/v1/wallets", json=WALLET))
    created(admin.post(f"/v1/wallets/{wallet['id']}/grants", json={"amount": "0.000000000002", "kind": "paid"}))

    found = events(admin)
    assert [e["position"] for e in found] == sorted({e["position"] for e in found})  # in order, each once
    assert {e["tenant"] for e in found} == {found[0]["tenant"]}
    registered = next(e for e in found if e["type"] == "customer.registered")
    assert (registered["actor"], registered["idempotency_key"], registered["customer"]) == (key, "create-acme-1", "acme")
    assert registered["data"]["external_id"] == "acme" and registered["aggregate_version"] == 1
    granted = next(e for e in found if e["type"] == "wallet.granted")
    assert granted["data"]["spec"]["amount"] == "0.000000000002"  # exact, plain notation
    assert UUID(granted["aggregate_id"]).hex == wallet["id"].removeprefix("wal_")
    issued = next(e for e in found if e["type"] == "api_key.issued")
    assert "secret_hash" not in issued["data"]  # a key's hash never leaves the store
    for event in found:  # each matches its documented schema
        assert audit.check(orjson.dumps(event)).id == event["id"]


def test_a_stream_and_a_time_range_narrow_the_list_and_bad_input_names_its_field(admin):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    wallet = created(admin.post("/v1/wallets", json=WALLET))
    time.sleep(0.01)
    middle = datetime.now(UTC)
    time.sleep(0.01)
    for amount in ("10", "20"):
        created(admin.post(f"/v1/wallets/{wallet['id']}/grants", json={"amount": amount, "kind": "paid"}))

    of_wallet = events(admin, stream=wallet["id"])
    assert [(e["type"], e["aggregate_version"]) for e in of_wallet] == [
        ("wallet.created", 1), ("wallet.granted", 2), ("wallet.granted", 3)]
    assert events(admin, stream=of_wallet[0]["aggregate_id"]) == of_wallet  # the UUID works as well
    later = events(admin, since=middle.isoformat())
    assert [e["type"] for e in later] == ["wallet.granted", "wallet.granted"]
    earlier = events(admin, until=middle.isoformat())
    assert {e["position"] for e in earlier}.isdisjoint({e["position"] for e in later})
    assert "wallet.created" in {e["type"] for e in earlier}

    for query, field in (({"stream": "nonsense"}, "stream"), ({"stream": "cus_123"}, "stream"),
                         ({"since": "yesterday"}, "since"), ({"starting_after": "-1"}, "starting_after"),
                         ({"limit": "101"}, "limit")):
        assert_problem(admin.get("/v1/audit/events", params=query), 422, field)


def test_a_tenant_sees_only_its_own_events(admin, ledger, base_url):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    wallet = created(admin.post("/v1/wallets", json=WALLET))
    _, secret = open_tenant(ledger, "Other")
    with client(base_url, secret) as other:
        created(other.post("/v1/customers", json={"external_id": "acme", "name": "Other Acme", "currency": "EUR"}))
        theirs = events(other)
        assert {e["type"] for e in theirs} == {"tenant.opened", "api_key.issued", "customer.registered"}
        assert events(other, stream=wallet["id"]) == []  # another tenant's stream: nothing
    ours = events(admin)
    assert not {e["id"] for e in ours} & {e["id"] for e in theirs}


def test_finance_reads_the_audit_and_the_rebuilt_trail_equals_the_live_one(admin, ledger, base_url):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    secret = created(admin.post("/v1/api-keys", json={"role": "finance"}))["key"]
    with client(base_url, secret) as finance:
        live = events(finance)
    ledger.runner.clear(["audit"])
    assert events(admin) == live  # the next read catches the trail up again from the store


# --- tally audit verify and tally replay ------------------------------------------------------------------------

def _verify(ledger) -> list:
    from ops.verify import verify
    return list(verify(ledger))


def test_verify_names_each_broken_row_and_replay_repairs_them(admin, ledger):
    books = month_of_business(admin, ledger)
    assert _verify(ledger) == []
    # Given read models broken on purpose: a document deleted, an invoice's amount due changed,
    # a usage reading deleted, an audit row moved to another stream, and a wallet's balance in its snapshot
    customer = private_id("customers", admin.get("/v1/customers/acme").json()["id"])
    closing = next(i for i in books["invoices"] if i["kind"] == "closing")
    with ledger.database.transaction(write=True) as cursor:
        cursor.execute("DELETE FROM tally_documents WHERE collection = 'customers' AND id = ?", (str(customer),))
        body = cursor.execute("SELECT body FROM tally_documents WHERE collection = 'invoices' AND id = ?",
                              (str(private_id("invoices", closing["id"])),)).one()[0]
        cursor.execute("UPDATE tally_documents SET body = ? WHERE collection = 'invoices' AND id = ?",
                       (body.replace(f'"amount_due":"{closing["amount_due"]}"', '"amount_due":"0.00"'),
                        str(private_id("invoices", closing["id"]))))
        reading = cursor.execute("SELECT position FROM tally_usage_readings WHERE event_id = 'e-7'").one()
        assert reading is not None
        cursor.execute("DELETE FROM tally_usage_readings WHERE event_id = 'e-7'")
        cursor.execute("UPDATE tally_audit SET stream_id = 'nowhere' WHERE position = (SELECT MAX(position) "
                       "FROM tally_audit)")
    wallet_id = private_id("wallets", books["wallet"]["id"])
    _tamper_snapshot(ledger, wallet_id)
    # When verified
    found = _verify(ledger)
    # Then each is named, and nothing else
    named = {(d.model, d.key.split("/")[0] if d.model != "usage" else d.key.rsplit("/", 1)[1]) for d in found}
    assert named == {("documents", "customers"), ("documents", "invoices"), ("usage", str(reading[0])),  # e-7's
                     ("audit", next(d.key.split("/")[0] for d in found if d.model == "audit")),
                     ("snapshots", str(wallet_id))}, found
    assert any(f"body.amount_due is '0.00' where the logs give '{closing['amount_due']}'" in d.detail for d in found)
    # And a replay from scratch, snapshots included, repairs all of it
    from ops.replay import MODELS, replay
    replay(ledger, MODELS, from_scratch=True)
    assert _verify(ledger) == []
    assert admin.get("/v1/customers/acme").status_code == 200


def _tamper_snapshot(ledger, wallet_id) -> None:
    """Give the wallet's snapshot a balance its events do not give (a grant's remaining credits)."""
    recorder = ledger.wallets.snapshots.recorder
    if ledger.database.postgres:
        with recorder.datastore.get_connection() as connection, connection.transaction():
            row = connection.execute(f"SELECT state FROM {recorder.events_table_name} WHERE originator_id = %s",
                                     [wallet_id]).fetchone()
            connection.execute(f"UPDATE {recorder.events_table_name} SET state = %s WHERE originator_id = %s",
                               [bytes(row["state"]).replace(b'"remaining":"1.5"', b'"remaining":"9.5"', 1), wallet_id])
        return
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(f"SELECT state FROM {recorder.events_table_name} WHERE originator_id = ?", [wallet_id.hex])
        state = bytes(cursor.fetchone()["state"])
        assert b'"remaining":"1.5"' in state
        cursor.execute(f"UPDATE {recorder.events_table_name} SET state = ? WHERE originator_id = ?",
                       [state.replace(b'"remaining":"1.5"', b'"remaining":"9.5"', 1), wallet_id.hex])


def test_verify_recomputes_each_finalized_invoice_byte_for_byte(admin, ledger):
    books = month_of_business(admin, ledger)
    finalized = [i for i in books["invoices"] if i["status"] in ("finalized", "paid")]
    pairs = [ledger.recomputed(private_id("invoices", i["id"])) for i in finalized]
    assert len(pairs) == 4 and all(recorded == again for recorded, again in pairs)
    # Given a finalized invoice whose recorded amount is not what its inputs give (history rewritten)
    closing = next(i for i in books["invoices"] if i["kind"] == "closing")
    _rewrite_total(ledger, private_id("invoices", closing["id"]), closing["total"])
    # Then verify names that invoice (and its document, which the rewritten log no longer gives), only it
    found, invoice_id = _verify(ledger), str(private_id("invoices", closing["id"]))
    assert [(d.model, d.key) for d in found] == [("documents", f"invoices/{invoice_id}"), ("invoices", invoice_id)]
    assert closing["number"] in found[1].detail and '"total":"1.00"' in found[1].detail


def _rewrite_total(ledger, invoice_id, total: str) -> None:
    recorder = ledger.invoicing.recorder
    old, new = f'"total":"{total}"'.encode(), b'"total":"1.00"'
    if ledger.database.postgres:
        with recorder.datastore.get_connection() as connection, connection.transaction():
            rows = connection.execute(f"SELECT originator_version, state FROM {recorder.events_table_name} "
                                      "WHERE originator_id = %s", [invoice_id]).fetchall()
            version, state = next((r["originator_version"], bytes(r["state"])) for r in rows if old in bytes(r["state"]))
            connection.execute(f"UPDATE {recorder.events_table_name} SET state = %s WHERE originator_id = %s AND "
                               "originator_version = %s", [state.replace(old, new), invoice_id, version])
        return
    with recorder.datastore.transaction(commit=True) as cursor:
        cursor.execute(f"SELECT originator_version, state FROM {recorder.events_table_name} WHERE originator_id = ?",
                       [invoice_id.hex])
        version, state = next((r["originator_version"], bytes(r["state"])) for r in cursor.fetchall()
                              if old in bytes(r["state"]))
        cursor.execute(f"UPDATE {recorder.events_table_name} SET state = ? WHERE originator_id = ? AND "
                       "originator_version = ?", [state.replace(old, new), invoice_id.hex, version])


def test_the_commands_exit_1_on_a_difference_and_a_replay_repairs_it(admin, ledger, database_url):
    from test_cli import tally, tally_env

    acme = private_id("customers", created(admin.post("/v1/customers", json={
        "external_id": "acme", "name": "Acme", "currency": "USD"}))["id"])
    env = tally_env(database_url)
    assert tally(env, "audit", "verify").returncode == 0
    with ledger.database.transaction(write=True) as cursor:
        cursor.execute("DELETE FROM tally_documents WHERE collection = 'customers'")
    broken = tally(env, "audit", "verify")
    assert broken.returncode == 1, broken.stderr
    assert [line.split("\t")[:2] for line in broken.stdout.splitlines()] == [["documents", f"customers/{acme}"]]
    replayed = tally(env, "replay", "--from-scratch")
    assert replayed.returncode == 0 and "documents" in replayed.stdout, replayed.stderr
    assert tally(env, "audit", "verify").returncode == 0
    assert admin.get("/v1/customers/acme").status_code == 200


def test_verify_on_a_live_store_ignores_what_was_written_after_it_began(admin, ledger):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    events = [{"event_id": f"e-{n}", "customer": "acme", "event_name": "llm", "timestamp": "2026-01-05T10:00:00Z",
               "properties": {"tokens": n}} for n in range(20)]
    assert admin.post("/v1/events/batch", json={"events": events}).json()["accepted"] == 20
    ledger.usage_runner.catch_up()
    from ops.verify import verify
    written: list[int] = []

    def meanwhile(step: str, done: int, of: int) -> None:  # called once the check has taken its bounds
        if not written:
            written.append(1)
            created(admin.post("/v1/customers", json={"external_id": "late", "name": "Late", "currency": "USD"}))
            assert admin.post("/v1/events/void", json={"customer": "acme", "event_ids": ["e-3"]}).status_code == 200
            assert admin.post("/v1/events", json={**events[0], "event_id": "e-late"}).status_code == 202
            ledger.usage_runner.catch_up()  # the live model takes the void and the new event in

    assert list(verify(ledger, meanwhile)) == []
    assert written == [1]
