"""Wallets through the HTTP API, on both stores: open one, grant credits, read the balance now and
as it stood at any past instant, the transactions with the balance after each, and refusals."""

from datetime import UTC, datetime

import pytest
from conftest import assert_problem, created

from api.clock import BillingClock

WALLET = {"customer": "acme", "name": "AI credits", "credit_unit": "credit", "currency": "USD",
          "conversion_rate": "0.01", "topup_conversion_rate": "0.008", "priority": 1, "overdraft_limit": "50"}


@pytest.fixture
def acme(admin, ledger):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    ledger.subscriptions.clock = lambda: datetime(2026, 1, 10, tzinfo=UTC)
    return admin


def test_grants_make_the_balance_and_a_grant_past_its_expiry_counts_no_more(acme, ledger):
    wallet = created(acme.post("/v1/wallets", json=WALLET))
    assert (wallet["balance"], wallet["grants"], wallet["topup_conversion_rate"]) == ("0", [], "0.008")
    url = f"/v1/wallets/{wallet['id']}"
    # When 1,000 paid credits and 200 promotional ones expiring on Jan 20 are granted
    created(acme.post(f"{url}/grants", json={"amount": "1000", "kind": "paid"}))
    between = datetime.now(UTC)  # events are stamped when recorded (the ledger's clock here is stopped)
    after = created(acme.post(f"{url}/grants", json={"amount": "200", "kind": "promotional",
                                                      "expires_at": "2026-01-20T00:00:00Z"}))
    # Then the balance is 1,200 and each grant shows what remains of it
    assert after["balance"] == "1200"
    assert [(g["kind"], g["remaining"], g["expires_at"]) for g in after["grants"]] == [
        ("paid", "1000", None), ("promotional", "200", "2026-01-20T00:00:00Z")]
    # And once Jan 20 has passed, the promotional grant counts no more (before the clock records it)
    ledger.subscriptions.clock = lambda: datetime(2026, 1, 21, tzinfo=UTC)
    now = acme.get(url).json()
    assert (now["balance"], [g["remaining"] for g in now["grants"]]) == ("1000", ["1000", "0"])
    # And as it stood between the two grants, from the events recorded by then, it had the first only
    then = acme.get(url, params={"as_of": between.isoformat()}).json()
    assert (then["balance"], len(then["grants"])) == ("1000", 1)
    assert_problem(acme.get(url, params={"as_of": "2020-01-01T00:00:00Z"}), 404)
    assert_problem(acme.get(url, params={"as_of": "yesterday"}), 422, "as_of")


def test_transactions_list_every_grant_with_the_balance_after_it_page_by_page(acme):
    wallet = created(acme.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    for amount in ("10", "20", "30", "40", "50"):
        created(acme.post(f"{url}/grants", json={"amount": amount, "kind": "paid"}))
    first = acme.get(f"{url}/transactions", params={"limit": 2}).json()
    assert [(t["type"], t["amount"], t["balance"]) for t in first["data"]] == [
        ("grant", "10", "10"), ("grant", "20", "30")]
    assert first["has_more"] is True
    rest = acme.get(f"{url}/transactions", params={"limit": 10, "starting_after": first["data"][-1]["id"]}).json()
    assert [(t["amount"], t["balance"]) for t in rest["data"]] == [("30", "60"), ("40", "100"), ("50", "150")]
    assert rest["has_more"] is False
    assert_problem(acme.get(f"{url}/transactions", params={"starting_after": "wtx_nope_1"}), 404, "starting_after")
    # And the customer's wallets list it
    listed = acme.get("/v1/wallets", params={"customer": "acme"}).json()
    assert [(w["id"], w["name"], w["priority"]) for w in listed["data"]] == [(wallet["id"], "AI credits", 1)]
    assert_problem(acme.get("/v1/wallets"), 422, "customer")


def test_bad_wallets_and_grants_are_refused_naming_the_field_and_change_nothing(acme, ledger):
    recorded = ledger.events_recorded()
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "customer": "nobody"}), 422, "customer")
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "currency": "EUR"}), 422, "currency")
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "conversion_rate": "0"}), 422, "conversion_rate")
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "overdraft_limit": "-1"}), 422, "overdraft_limit")
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "conversion_rate": 0.01}), 422, "conversion_rate")
    assert ledger.events_recorded() == recorded
    url = f"/v1/wallets/{created(acme.post('/v1/wallets', json=WALLET))['id']}"
    recorded = ledger.events_recorded()
    assert_problem(acme.post(f"{url}/grants", json={"amount": "-5", "kind": "paid"}), 422, "amount")
    assert_problem(acme.post(f"{url}/grants", json={"amount": "5", "kind": "free"}), 422, "kind")
    assert_problem(acme.post(f"{url}/grants", json={"amount": "5", "kind": "paid",
                                                    "expires_at": "2026-01-01T00:00:00Z"}), 422, "expires_at")
    assert ledger.events_recorded() == recorded
    assert_problem(acme.get("/v1/wallets/wal_00000000000000000000000000000000"), 404)


def test_the_billing_clock_records_each_expiry_once_as_a_transaction(acme, ledger):
    wallet = created(acme.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    created(acme.post(f"{url}/grants", json={"amount": "1000", "kind": "paid"}))
    created(acme.post(f"{url}/grants", json={"amount": "200", "kind": "promotional",
                                             "expires_at": "2026-01-20T00:00:00Z"}))
    clock = BillingClock(ledger, 0, now=lambda: datetime(2026, 1, 19, tzinfo=UTC))
    # When the clock ticks before Jan 20, nothing expires
    assert clock.tick() == 0
    # When it ticks after, the promotional grant's 200 expire, once however often it ticks
    clock.now = lambda: datetime(2026, 1, 21, tzinfo=UTC)
    assert (clock.tick(), clock.tick()) == (1, 0)
    # Then the expiry is a transaction, and the balance what the paid grant holds
    found = acme.get(f"{url}/transactions").json()["data"]
    assert [(t["type"], t["amount"], t["balance"]) for t in found] == [
        ("grant", "1000", "1000"), ("grant", "200", "1200"), ("expiry", "-200", "1000")]
    assert found[-1]["created_by"] == "system:billing-clock"
    assert acme.get(url).json()["balance"] == "1000"
