"""Wallets through the HTTP API, on both stores: open one, grant credits, read the balance now and
as it stood at any past instant, the transactions with the balance after each, and refusals."""

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from conftest import assert_problem, client, created
from eventsourcing.persistence import IntegrityError

from api.clock import BillingClock
from projections import usage_readings
from projections.views import private_id

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
    assert_problem(acme.post("/v1/wallets", json={**WALLET, "alerts": [{"level": "info", "below": "5",
                                                                        "feature_code": "nope"}]}),
                   422, "alerts[0].feature_code")
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


@pytest.fixture
def metered(acme):
    """Customer acme on a monthly plan at $0.01 a token from Jan 1 2026 (the ledger's clock: Jan 10)."""
    created(acme.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                          "aggregation": "sum", "field": "tokens"}))
    created(acme.post("/v1/features", json={"code": "ai", "name": "AI", "type": "metered", "meter_code": "tokens"}))
    created(acme.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}))
    created(acme.post("/v1/plans/pro/versions", json={"prices": [
        {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "0.01"}]}))
    created(acme.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "pro",
                                                 "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    return acme


def use(admin, event_id: str, tokens: int, when: str = "2026-01-05T00:00:00Z") -> None:
    answer = admin.post("/v1/events", json={"event_id": event_id, "customer": "acme", "event_name": "llm",
                                            "timestamp": when, "properties": {"tokens": tokens}})
    assert answer.json().get("accepted") == 1, answer.text


def test_usage_is_debited_in_the_spending_order_at_once_and_once_only(metered, ledger):
    # Given a wallet (a credit is worth $0.01, 50 credits of overdraft) with 500 paid credits and 100
    # promotional ones that expire on Jan 31
    wallet = created(metered.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "500", "kind": "paid"}))
    created(metered.post(f"{url}/grants", json={"amount": "100", "kind": "promotional",
                                                "expires_at": "2026-01-31T00:00:00Z"}))
    # When 300 tokens ($3.00, so 300 credits) are used
    use(metered, "u-1", 300)
    # Then the very next read counts them, before any debit is recorded: the promotional grant first
    fresh = metered.get(url).json()
    assert (fresh["balance"], [g["remaining"] for g in fresh["grants"]]) == ("300", ["300", "0"])
    # And one debit pass records them, once, however often it runs
    assert ledger.debit_usage() == 1
    assert ledger.debit_usage() == 0
    debits = [t for t in metered.get(f"{url}/transactions").json()["data"] if t["type"] == "debit"]
    assert [(t["amount"], t["balance"], t["created_by"]) for t in debits] == [("-300", "300",
                                                                               "system:wallet-debits")]
    assert metered.get(url).json()["balance"] == "300"
    # And a pass that reads the same usage again (a crash before its position was kept) charges nothing
    with ledger.database.transaction(write=True) as cursor:
        cursor.execute("UPDATE tally_positions SET position = 0 WHERE name = 'wallet-debits'")
    assert ledger.debit_usage() == 1
    assert metered.get(url).json()["balance"] == "300"
    # When 400 more tokens are used, the grants and then the overdraft pay, down to -50 and no further
    use(metered, "u-2", 400)
    assert ledger.debit_usage() == 1
    final = metered.get(url).json()
    assert (final["balance"], [g["remaining"] for g in final["grants"]]) == ("-50", ["0", "0"])
    # And January's invoice bills the 700 tokens, less the $6.50 the wallet paid: $0.50 is due
    ledger.close_periods(datetime(2026, 2, 3, tzinfo=UTC))
    closing = metered.get("/v1/invoices", params={"customer": "acme", "status": "finalized"}).json()["data"]
    assert len(closing) == 1
    invoice = metered.get(f"/v1/invoices/{closing[0]['id']}").json()
    assert (invoice["total"], invoice["credits_applied"], invoice["amount_due"]) == ("7.00", "6.50", "0.50")


def test_a_debit_pass_counts_every_entry_it_charges_through_even_one_not_published_yet(metered, ledger,
                                                                                       monkeypatch):
    """A pass reads the log's entries as committed; the position published to the checks may lag
    behind them. Its charges say they reached its last entry, so its costs count up to there."""
    ledger.counters.stop()  # the counters follow the log when the test says
    wallet = created(metered.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "1000", "kind": "paid"}))
    use(metered, "u-1", 100)
    assert ledger.debit_usage() == 1  # acme's month counted up to u-1
    published = ledger.usage.published()
    use(metered, "u-2", 40)  # committed, but (below) not published yet
    monkeypatch.setattr(ledger.usage, "published", lambda: published)
    # When a pass charges through u-2
    assert ledger.debit_usage() == 1
    monkeypatch.undo()
    # Then u-2 is debited, and nothing is left to debit
    debits = [t["amount"] for t in metered.get(f"{url}/transactions").json()["data"] if t["type"] == "debit"]
    assert sorted(debits) == ["-100", "-40"]
    assert ledger.debit_usage() == 0
    assert metered.get(url).json()["balance"] == "860"


def test_a_balance_and_a_debit_count_the_period_s_usage_without_reading_its_events_again(metered, ledger,
                                                                                          monkeypatch):
    """What usage has cost so far (a live balance, a debit pass) takes each meter's quantity from the
    counters that follow the log (but a weighted_sum's), not from the period's events read again: a
    customer with millions of events in its period would have them read at every debit pass."""
    wallet = created(metered.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "500", "kind": "paid"}))
    use(metered, "u-1", 100)
    assert metered.get(url).json()["balance"] == "400"  # the counters begin here, from the period's events
    reads = []
    for name in ("fresh", "fresh_many"):
        original = getattr(usage_readings, name)
        monkeypatch.setattr(usage_readings, name, lambda *a, _original=original, **k: reads.append(a) or _original(
            *a, **k))
    for n in range(3):
        use(metered, f"u-{n + 2}", 10)
        assert metered.get(url).json()["balance"] == str(390 - 10 * n)
        assert ledger.debit_usage() == (2 if n == 0 else 1)
    assert metered.get(url).json()["balance"] == "370" and reads == []
    # And January's invoice, read from the events, bills what the wallet paid: nothing is due
    ledger.close_periods(datetime(2026, 2, 3, tzinfo=UTC))
    closing, = metered.get("/v1/invoices", params={"customer": "acme", "status": "finalized"}).json()["data"]
    invoice = metered.get(f"/v1/invoices/{closing['id']}").json()
    assert (invoice["total"], invoice["credits_applied"], invoice["amount_due"]) == ("1.30", "1.30", "0.00")


def test_wallets_are_spent_by_priority_and_only_for_the_features_they_apply_to(metered, ledger):
    # Given a priority-0 wallet for feature "ai" (the tokens meter) and a priority-1 wallet for anything
    first = created(metered.post("/v1/wallets", json={**WALLET, "name": "AI only", "priority": 0,
                                                      "overdraft_limit": "0", "applies_to": {"features": ["ai"]}}))
    second = created(metered.post("/v1/wallets", json={**WALLET, "name": "General", "overdraft_limit": "0"}))
    for found in (first, second):
        created(metered.post(f"/v1/wallets/{found['id']}/grants", json={"amount": "100", "kind": "paid"}))
    # When 150 tokens are used and debited
    use(metered, "u-1", 150)
    ledger.debit_usage()
    # Then the priority-0 wallet is emptied first, the rest comes from the other
    balances = [metered.get(f"/v1/wallets/{found['id']}").json()["balance"] for found in (first, second)]
    assert balances == ["0", "50"]
    # And a wallet for a feature that does not exist, or is not metered, is refused
    assert_problem(metered.post("/v1/wallets", json={**WALLET, "applies_to": {"features": ["nope"]}}), 422,
                   "applies_to.features[0]")


def test_a_top_up_is_an_invoice_whose_credits_land_once_it_is_paid(metered, ledger):
    wallet = created(metered.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    # When 1,000 credits are bought at $0.008 each
    bought = created(metered.post(f"{url}/topups", json={"amount": "1000"}))
    assert (bought["amount"], bought["status"], bought["auto"]) == ("1000", "pending", False)
    # Then a finalized $8.00 invoice sells them, and nothing lands before it is paid
    invoice = metered.get(f"/v1/invoices/{bought['invoice_id']}").json()
    assert (invoice["status"], invoice["total"], invoice["wallet"], invoice["subscription"]) == (
        "finalized", "8.00", wallet["id"], None)
    assert invoice["lines"][0]["description"] == "Top-up: 1000 credit (AI credits)"
    assert metered.get(url).json()["balance"] == "0"
    # When it is paid, the credits land as a paid grant, once
    assert metered.post(f"/v1/invoices/{bought['invoice_id']}/pay", json={}).status_code == 200
    after = metered.get(url).json()
    assert (after["balance"], after["topups"][0]["status"], after["grants"][0]["kind"]) == ("1000", "landed", "paid")
    moves = metered.get(f"{url}/transactions").json()["data"]
    assert [(t["type"], t["amount"], t["balance"]) for t in moves] == [("topup", "1000", "1000")]
    # And a top-up that costs nothing is refused, naming the amount
    assert_problem(metered.post(f"{url}/topups", json={"amount": "0.1"}), 422, "amount")


def test_low_balance_alerts_and_the_auto_top_up_fire_once_per_crossing(metered, ledger):
    # Given a wallet that warns below 200, is critical below 50, and buys 500 credits below 100
    wallet = created(metered.post("/v1/wallets", json={
        **WALLET, "overdraft_limit": "0", "auto_topup": {"below": "100", "amount": "500"},
        "alerts": [{"level": "warning", "below": "200"}, {"level": "critical", "below": "50"}]}))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "300", "kind": "paid"}))
    # When usage takes it to 150, then 60, then 20, a debit pass after each
    for n, tokens in enumerate((150, 90, 40)):
        use(metered, f"u-{n}", tokens)
        ledger.debit_usage()
    # Then each alert fired once, and one auto top-up was asked for, not one per debit below the level
    found = metered.get(url).json()
    assert found["balance"] == "20"
    assert [(t["amount"], t["status"], t["auto"]) for t in found["topups"]] == [("500", "pending", True)]
    events = list(ledger.wallets.repository.event_store.get(private_id("wallets", wallet["id"])))
    assert [(e.level, str(e.balance)) for e in events if type(e).__name__ == "BalanceLow"] == [
        ("warning", "150"), ("critical", "20")]
    # When the top-up's invoice is paid, the credits land, and the levels are armed again
    assert metered.post(f"/v1/invoices/{found['topups'][0]['invoice_id']}/pay", json={}).status_code == 200
    assert metered.get(url).json()["balance"] == "520"
    use(metered, "u-3", 400)
    ledger.debit_usage()
    again = metered.get(url).json()
    assert again["balance"] == "120"
    events = list(ledger.wallets.repository.event_store.get(private_id("wallets", wallet["id"])))
    assert [e.level for e in events if type(e).__name__ == "BalanceLow"] == ["warning", "critical", "warning"]


def test_a_child_draws_on_its_parent_s_pooled_wallet_once_its_own_runs_out(metered, ledger):
    # Given acme's pooled wallet (500) and a private one (500), and its child acme-jr with a wallet of 100
    created(metered.post("/v1/customers", json={"external_id": "acme-jr", "name": "Acme Jr", "currency": "USD",
                                                "parent_external_id": "acme"}))
    created(metered.post("/v1/subscriptions", json={"customer": "acme-jr", "plan_code": "pro",
                                                    "start_at": "2026-01-01T00:00:00Z",
                                                    "billing_anchor": "calendar"}))
    pooled = created(metered.post("/v1/wallets", json={**WALLET, "name": "Pool", "pooled": True,
                                                       "overdraft_limit": "0"}))
    private = created(metered.post("/v1/wallets", json={**WALLET, "name": "Private", "priority": 0,
                                                        "overdraft_limit": "0"}))
    own = created(metered.post("/v1/wallets", json={**WALLET, "customer": "acme-jr", "name": "Own",
                                                    "overdraft_limit": "0"}))
    for found, amount in ((pooled, "500"), (private, "500"), (own, "100")):
        created(metered.post(f"/v1/wallets/{found['id']}/grants", json={"amount": amount, "kind": "paid"}))
    # When acme-jr uses 250 tokens (250 credits)
    answer = metered.post("/v1/events", json={"event_id": "jr-1", "customer": "acme-jr", "event_name": "llm",
                                              "timestamp": "2026-01-05T00:00:00Z", "properties": {"tokens": 250}})
    assert answer.json()["accepted"] == 1
    # Then its own wallet pays 100 and the parent's pooled one the rest (read before and after the debit pass),
    # and the parent's private wallet nothing
    for _ in range(2):
        balances = [metered.get(f"/v1/wallets/{found['id']}").json()["balance"] for found in (own, pooled, private)]
        assert balances == ["0", "350", "500"]
        ledger.debit_usage()


def test_a_recurring_grant_comes_again_each_interval_and_rolls_over_up_to_its_cap(acme, ledger):
    # Given 100 credits granted on Jan 10, again every month, at most 30 left over rolling over
    wallet = created(acme.post("/v1/wallets", json=WALLET))
    url = f"/v1/wallets/{wallet['id']}"
    created(acme.post(f"{url}/grants", json={"amount": "100", "kind": "promotional",
                                             "recurrence": {"interval": "month", "rollover_cap": "30"}}))
    clock = BillingClock(ledger, 0, now=lambda: datetime(2026, 2, 9, tzinfo=UTC))
    assert clock.tick() == 0  # not due before Feb 10
    # When the clock runs on Mar 15 (Feb 10 and Mar 10 both came), twice
    clock.now = lambda: datetime(2026, 3, 15, tzinfo=UTC)
    assert clock.tick() > 0
    assert clock.tick() == 0
    # Then each month's leftover beyond 30 expired, and a new 100 came each time
    moves = acme.get(f"{url}/transactions").json()["data"]
    assert [(t["type"], t["amount"], t["balance"]) for t in moves] == [
        ("grant", "100", "100"), ("expiry", "-70", "30"), ("grant", "100", "130"), ("expiry", "-70", "60"),
        ("grant", "100", "160")]
    # And a recurring grant that also expires is refused, naming expires_at
    both = {"amount": "5", "kind": "paid", "expires_at": "2026-06-01T00:00:00Z", "recurrence": {"interval": "month"}}
    assert_problem(acme.post(f"{url}/grants", json=both), 422, "expires_at")


def test_concurrent_debits_and_top_ups_on_one_wallet_never_overspend_and_lose_no_update(metered, ledger):
    # Given a wallet holding 1,000 credits, no overdraft
    wallet = created(metered.post("/v1/wallets", json={**WALLET, "overdraft_limit": "0"}))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "1000", "kind": "paid"}))
    failures: list[BaseException] = []

    def again(action) -> None:  # a lost race (409, or a save that found the wallet moved on) is retried
        for _ in range(200):
            try:
                if action() is not False:
                    return
            except IntegrityError:
                pass
        failures.append(AssertionError("never got through"))

    def spend(n: int) -> None:
        use(metered, f"c-{n}", 40)
        again(lambda: ledger.debit_usage() >= 0)

    def buy(n: int) -> None:
        for _ in range(50):  # 409: the wallet or the invoice numbers moved on meanwhile; the API says retry
            bought = metered.post(f"{url}/topups", json={"amount": "100"})
            if bought.status_code != 409:
                break
        if bought.status_code != 201:
            failures.append(AssertionError(bought.text))
            return
        again(lambda: metered.post(f"/v1/invoices/{bought.json()['invoice_id']}/pay",
                                   json={}).status_code in (200, 409) and _paid(metered, bought.json()["invoice_id"]))

    # When 25 threads each use 40 credits and run a debit pass, while 25 buy 100 credits and pay for them
    threads = [threading.Thread(target=spend, args=(n,)) for n in range(25)]
    threads += [threading.Thread(target=buy, args=(n,)) for n in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    while ledger.debit_usage():
        pass
    # Then every top-up landed once and every credit used was debited once: 1,000 + 2,500 - 1,000
    found = metered.get(url).json()
    assert found["balance"] == "2500"
    assert [t["status"] for t in found["topups"]] == ["landed"] * 25
    moves = []
    after = None
    while True:
        page = metered.get(f"{url}/transactions", params={"limit": 100, **({"starting_after": after} if after else {})})
        moves += page.json()["data"]
        if not page.json()["has_more"]:
            break
        after = moves[-1]["id"]
    debited = sum(Decimal(t["amount"]) for t in moves if t["type"] == "debit")
    assert (debited, sum(t["type"] == "topup" for t in moves)) == (Decimal(-1000), 25)
    assert all(Decimal(t["balance"]) >= 0 for t in moves)


def _paid(admin, invoice_id: str) -> bool:
    return admin.get(f"/v1/invoices/{invoice_id}").json()["status"] == "paid"


def test_a_void_after_a_debit_gives_the_credits_back_and_the_invoice_bills_what_is_left(metered, ledger):
    wallet = created(metered.post("/v1/wallets", json={**WALLET, "overdraft_limit": "0"}))
    url = f"/v1/wallets/{wallet['id']}"
    created(metered.post(f"{url}/grants", json={"amount": "1000", "kind": "paid"}))
    use(metered, "e-1", 300)
    use(metered, "e-2", 200)
    ledger.debit_usage()
    assert metered.get(url).json()["balance"] == "500"
    # When e-2 is voided and the next debit pass runs
    assert metered.post("/v1/events/void", json={"customer": "acme", "event_ids": ["e-2"]}).status_code == 200
    ledger.debit_usage()
    # Then its 200 credits come back, as a reversal, to the grant they came from
    found = metered.get(url).json()
    assert (found["balance"], found["grants"][0]["remaining"]) == ("700", "700")
    moves = metered.get(f"{url}/transactions").json()["data"]
    assert [(t["type"], t["amount"], t["balance"]) for t in moves] == [
        ("grant", "1000", "1000"), ("debit", "-500", "500"), ("reversal", "200", "700")]
    # And January's invoice bills the 300 tokens, all paid by the wallet
    ledger.close_periods(datetime(2026, 2, 3, tzinfo=UTC))
    closing = metered.get("/v1/invoices", params={"customer": "acme", "status": "finalized"}).json()["data"]
    invoice = metered.get(f"/v1/invoices/{closing[0]['id']}").json()
    assert (invoice["total"], invoice["credits_applied"], invoice["amount_due"]) == ("3.00", "3.00", "0.00")


def test_a_portal_key_tops_up_its_own_customer_s_wallets_only(acme, ledger, base_url):
    created(acme.post("/v1/customers", json={"external_id": "globex", "name": "Globex", "currency": "USD"}))
    mine = created(acme.post("/v1/wallets", json=WALLET))
    theirs = created(acme.post("/v1/wallets", json={**WALLET, "customer": "globex"}))
    key = created(acme.post("/v1/api-keys", json={"role": "portal", "customer": "acme"}))["key"]
    with client(base_url, key) as portal:
        assert portal.post(f"/v1/wallets/{mine['id']}/topups", json={"amount": "1000"}).status_code == 201
        recorded = ledger.events_recorded()
        assert_problem(portal.post(f"/v1/wallets/{theirs['id']}/topups", json={"amount": "1000"}), 404)
        assert_problem(portal.get(f"/v1/wallets/{theirs['id']}"), 404)
        assert ledger.events_recorded() == recorded


def test_a_wallet_past_a_hundred_events_is_read_from_its_snapshot_the_same(admin, ledger):
    """Every 100 events a wallet is snapshotted (grants, top-ups and fired alerts included): reading it
    from the snapshot gives what its events give."""
    created(admin.post("/v1/customers", json={"external_id": "big", "name": "Big", "currency": "USD"}))
    wallet = created(admin.post("/v1/wallets", json={
        "customer": "big", "name": "Credits", "credit_unit": "credit", "currency": "USD", "conversion_rate": "0.01",
        "alerts": [{"level": "warning", "below": "5"}]}))
    for _ in range(105):
        created(admin.post(f"/v1/wallets/{wallet['id']}/grants", json={"amount": "10.5", "kind": "paid"}))
    wallet_id = private_id("wallets", wallet["id"])
    assert [s.originator_version for s in ledger.wallets.snapshots_stored()] == [100]
    assert admin.get(f"/v1/wallets/{wallet['id']}").json()["balance"] == "1102.5"
    assert ledger.wallets.repository.get(wallet_id).balance == ledger.wallets.replayed(wallet_id).balance
