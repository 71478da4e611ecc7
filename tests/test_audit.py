"""The audit trail: `GET /v1/audit/events` shows a tenant's domain events as recorded (position,
time, tenant, actor, Idempotency-Key), a page at a time by position, on both stores."""

import time
from datetime import UTC, datetime
from uuid import UUID

import orjson
from conftest import assert_problem, client, created, open_tenant

from projections import audit

WALLET = {"customer": "acme", "name": "AI credits", "credit_unit": "credit", "currency": "USD",
          "conversion_rate": "0.01"}


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
