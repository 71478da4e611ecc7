"""Entitlement checks through the HTTP API, on both stores: metered limits in UTC half-open reset
windows, soft vs hard limits, boolean and config features, and usage counted the moment it is
acknowledged."""

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from uuid import UUID

import httpx
import pytest
from conftest import assert_problem, client, created
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import listeners, serving, tally_env

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.customer_entitlements import CustomerEntitlements, OverrideSpec
from domain.meter import MeterSpec
from domain.metering import Reading, Running, aggregate
from domain.subscription import SubscriptionSpec
from domain.usage import UsageEvent
from ops.bench.entitlements import customer as bench_customer
from ops.bench.entitlements import set_up_http
from projections import usage_counters
from projections.usage_counters import SCAN_LIMIT
from projections.usage_log import microseconds
from projections.views import private_id


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def acme(admin, ledger):
    """acme on plan pro from Jan 1 2026: 1,000 tokens a month (soft up to 1,200), 10 images a day
    (hard), SSO on, 20 seats."""
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/meters", json={"code": "images", "name": "Images", "event_name": "image",
                                           "aggregation": "count"}))
    for feature in ({"code": "ai", "name": "AI", "type": "metered", "meter_code": "tokens"},
                    {"code": "img", "name": "Images", "type": "metered", "meter_code": "images"},
                    {"code": "sso", "name": "SSO", "type": "boolean"},
                    {"code": "seats", "name": "Seats", "type": "config"}):
        created(admin.post("/v1/features", json=feature))
    created(admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}))
    created(admin.post("/v1/plans/pro/versions", json={
        "prices": [{"type": "flat", "currency": "USD", "amount": "10.00", "pay_in": "advance"}],
        "entitlements": [{"feature_code": "ai", "limit": "1000", "soft_limit": "1200", "reset": "month"},
                         {"feature_code": "img", "limit": "10", "reset": "day"},
                         {"feature_code": "sso", "enabled": True}, {"feature_code": "seats", "value": "20"}]}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    created(admin.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "pro",
                                                  "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    return admin


def use(admin, event_id: str, name: str, when: str, **properties) -> None:
    answer = admin.post("/v1/events", json={"event_id": event_id, "customer": "acme", "event_name": name,
                                            "timestamp": when, "properties": properties})
    assert answer.json().get("accepted") == 1, answer.text


def check(admin, feature: str, quantity: str | None = None, customer: str = "acme") -> dict:
    body = {"customer": customer, "feature_code": feature, **({"quantity": quantity} if quantity else {})}
    answer = admin.post("/v1/entitlements/check", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_metered_limit_counts_its_month_and_allows_up_to_the_soft_limit_then_denies(acme, ledger):
    ledger.subscriptions.clock = lambda: at("2026-01-31T23:00:00")
    use(acme, "jan", "llm", "2026-01-15T00:00:00Z", tokens=900)
    # Then within the limit, up to the soft limit (flagged), and beyond it (denied)
    first = check(acme, "ai", "100")
    assert (first["allowed"], first["reason"], first["used"], first["remaining"], first["limit"]) == (
        True, "within_limit", "900", "100", "1000")
    assert first["resets_at"] == "2026-02-01T00:00:00Z"
    assert (check(acme, "ai", "300")["allowed"], check(acme, "ai", "300")["reason"]) == (True, "soft_limit")
    assert (check(acme, "ai", "301")["allowed"], check(acme, "ai", "301")["reason"]) == (False, "limit_exceeded")
    # When usage acknowledged a moment ago takes it to the limit, the very next check counts it
    use(acme, "jan-2", "llm", "2026-01-31T22:59:00Z", tokens=100)
    assert (check(acme, "ai")["used"], check(acme, "ai")["reason"]) == ("1000", "soft_limit")
    # And at Feb 1 00:00 exactly (half-open windows) a new month starts from what February used
    ledger.subscriptions.clock = lambda: at("2026-02-01T00:00:00")
    use(acme, "feb", "llm", "2026-02-01T00:00:00Z", tokens=7)
    february = check(acme, "ai")
    assert (february["used"], february["remaining"], february["reason"]) == ("7", "993", "within_limit")


def test_a_daily_hard_limit_resets_at_utc_midnight(acme, ledger):
    ledger.subscriptions.clock = lambda: at("2026-01-10T23:59:59")
    for n in range(10):
        use(acme, f"img-{n}", "image", "2026-01-10T12:00:00Z")
    assert (check(acme, "img")["allowed"], check(acme, "img")["reason"]) == (False, "limit_exceeded")
    assert check(acme, "img", "0")["allowed"] is True  # nothing more asked for
    ledger.subscriptions.clock = lambda: at("2026-01-11T00:00:00")
    assert (check(acme, "img")["allowed"], check(acme, "img")["used"]) == (True, "0")


def test_boolean_and_config_features_and_what_is_not_granted(acme, ledger, admin):
    ledger.subscriptions.clock = lambda: at("2026-01-10T00:00:00")
    assert (check(acme, "sso")["allowed"], check(acme, "sso")["reason"]) == (True, "enabled")
    assert (check(acme, "seats")["value"], check(acme, "seats")["reason"]) == ("20", "value")
    created(acme.post("/v1/features", json={"code": "sla", "name": "SLA", "type": "boolean"}))
    assert (check(acme, "sla")["allowed"], check(acme, "sla")["reason"]) == (False, "not_in_plan")
    listed = acme.get("/v1/customers/acme/entitlements").json()["data"]
    assert [(e["feature_code"], e["allowed"]) for e in listed] == [
        ("ai", True), ("img", True), ("sso", True), ("seats", True)]
    # Before the subscription starts, nothing is granted
    ledger.subscriptions.clock = lambda: at("2025-12-31T00:00:00")
    assert (check(acme, "sso")["allowed"], check(acme, "sso")["reason"]) == (False, "no_subscription")
    # And a check for a customer that does not exist is a 404; a bad quantity a 422 naming it
    assert_problem(acme.post("/v1/entitlements/check", json={"customer": "nobody", "feature_code": "ai"}), 404)
    assert_problem(acme.post("/v1/entitlements/check", json={"customer": "acme", "feature_code": "ai",
                                                             "quantity": "-1"}), 422, "quantity")


def test_an_override_wins_until_its_time_then_the_plan_returns_and_each_is_an_event(acme, ledger):
    ledger.subscriptions.clock = lambda: at("2026-01-10T00:00:00")
    use(acme, "jan", "llm", "2026-01-05T00:00:00Z", tokens=1500)
    assert check(acme, "ai")["allowed"] is False
    # When admin raises acme's AI limit to 5,000 until Jan 20, and switches SSO off for good
    raised = acme.post("/v1/customers/acme/entitlement-overrides",
                       json={"feature_code": "ai", "limit": "5000", "until": "2026-01-20T00:00:00Z"})
    assert raised.status_code == 201, raised.text
    assert (raised.json()["limit"], raised.json()["remaining"]) == ("5000", "3500")
    created(acme.post("/v1/customers/acme/entitlement-overrides", json={"feature_code": "sso", "enabled": False}))
    # Then the override wins (same monthly window), and SSO is off
    assert (check(acme, "ai")["allowed"], check(acme, "ai")["limit"]) == (True, "5000")
    assert (check(acme, "sso")["allowed"], check(acme, "sso")["reason"]) == (False, "disabled")
    # And from Jan 20 the plan's limit is back
    ledger.subscriptions.clock = lambda: at("2026-01-20T00:00:00")
    assert (check(acme, "ai")["allowed"], check(acme, "ai")["limit"]) == (False, "1000")
    # And each override is an event, with who set it
    record = ledger.customers.entitlements(_tenant(ledger), "acme")
    events = list(ledger.customers.repository.event_store.get(record.id))
    assert [e.spec.feature_code for e in events if hasattr(e, "spec")] == ["ai", "sso"]
    assert all(e.actor.startswith("key_") for e in events)
    # And an override must fit its feature: a limit for a metered one, known features only, a future until
    assert_problem(acme.post("/v1/customers/acme/entitlement-overrides",
                             json={"feature_code": "sso", "limit": "3"}), 422, "enabled")
    assert_problem(acme.post("/v1/customers/acme/entitlement-overrides",
                             json={"feature_code": "nope", "enabled": True}), 422, "feature_code")
    assert_problem(acme.post("/v1/customers/acme/entitlement-overrides",
                             json={"feature_code": "ai", "limit": "1", "until": "2026-01-01T00:00:00Z"}), 422, "until")


def _tenant(ledger) -> UUID:
    with ledger.database.transaction() as cursor:
        row = cursor.execute("SELECT tenant_id FROM tally_documents WHERE collection = 'customers' "
                             "AND code = 'acme'").one()
    return UUID(row[0])


def _crossings(ledger) -> list:
    record = ledger.customers.entitlements(_tenant(ledger), "acme")
    events = list(ledger.customers.repository.event_store.get(record.id)) if record else []
    return [e for e in events if isinstance(e, CustomerEntitlements.Exceeded)]


def test_the_first_check_beyond_a_limit_records_entitlement_exceeded_once_per_window(acme, ledger):
    ledger.subscriptions.clock = lambda: at("2026-01-10T23:00:00")
    for n in range(10):
        use(acme, f"a-{n}", "image", "2026-01-10T12:00:00Z")
    # When checks ask beyond the daily limit, again and again
    assert [check(acme, "img")["reason"] for _ in range(3)] == ["limit_exceeded"] * 3
    # Then one crossing is recorded for the day, by the key that checked, with the use and limit then
    first, = _crossings(ledger)
    assert (first.feature_code, first.window_start, first.resets_at) == ("img", at("2026-01-10T00:00:00"),
                                                                         at("2026-01-11T00:00:00"))
    assert (first.limit, first.used, first.quantity, first.allowed) == (10, 10, 1, False)
    assert first.actor.startswith("key_")
    # (and the context the checks keep knows it at once: the next checks read no aggregate to find it out)
    assert ledger._entitlement_context(_tenant(ledger), "acme")[1].crossed("img", at("2026-01-10T00:00:00"), 10)
    # And a check allowed only up to the soft limit is a crossing of its own window (the month's)
    use(acme, "tokens", "llm", "2026-01-10T12:00:00Z", tokens=900)
    assert check(acme, "ai", "200")["reason"] == "soft_limit"
    assert check(acme, "ai", "50")["reason"] == "within_limit"  # asks for no more than the limit: no crossing
    assert [(c.feature_code, c.allowed) for c in _crossings(ledger)] == [("img", False), ("ai", True)]
    # When the next day's use crosses again, that is a new window's crossing
    ledger.subscriptions.clock = lambda: at("2026-01-11T00:30:00")
    assert check(acme, "img")["allowed"] is True
    for n in range(10):
        use(acme, f"b-{n}", "image", "2026-01-11T00:10:00Z")
    check(acme, "img")
    check(acme, "img")
    # And a raised limit is a new limit to cross in the same window
    created(acme.post("/v1/customers/acme/entitlement-overrides", json={"feature_code": "img", "limit": "15"}))
    assert check(acme, "img")["reason"] == "within_limit"
    for n in range(5):
        use(acme, f"c-{n}", "image", "2026-01-11T00:20:00Z")
    check(acme, "img")
    assert [(c.feature_code, c.window_start.day, c.limit) for c in _crossings(ledger)] == [
        ("img", 10, 10), ("ai", 1, 1000), ("img", 11, 10), ("img", 11, 15)]
    # And the listing (a read) records nothing
    acme.get("/v1/customers/acme/entitlements")
    assert len(_crossings(ledger)) == 4


def test_a_long_record_of_crossings_is_read_from_its_snapshot_and_still_records_each_crossing_once(acme, ledger):
    # Given 150 days, each with the daily image limit crossed once (a record read whole at each change)
    tenant, by = _tenant(ledger), Actor("system:test")
    days = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n) for n in range(150)]
    for day in days:
        ledger.customers.exceed(by, tenant, "acme", "img", day, day + timedelta(days=1), Decimal(10), Decimal(10),
                                Decimal(1), False)
    # Then the record is read from a snapshot (taken at its 100th event) and the events after it, and is
    # what folding all its events gives
    record = ledger.customers.entitlements(tenant, "acme")
    assert [s.originator_version for s in ledger.customers.snapshots.get(record.id)] == [100]
    folded = ledger.customers.replayed(record.id)
    assert (record.version, record.crossings, record.overrides) == (151, folded.crossings, folded.overrides)
    assert len(record.crossings) == 150
    # And a crossing from before the snapshot is known: recording it again records nothing
    ledger.customers.exceed(by, tenant, "acme", "img", days[3], days[4], Decimal(10), Decimal(10), Decimal(1), False)
    assert ledger.customers.entitlements(tenant, "acme").version == 151
    assert len(_crossings(ledger)) == 150


@pytest.fixture
def prepaid(admin, ledger):
    """acme on plan prepaid from Jan 1 2026: tokens at $0.01, 1,000,000 a month, gated by its wallets;
    images counted, not gated. The ledger's clock: Jan 10."""
    ledger.subscriptions.clock = lambda: at("2026-01-10T00:00:00")
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/meters", json={"code": "images", "name": "Images", "event_name": "image",
                                           "aggregation": "count"}))
    created(admin.post("/v1/features", json={"code": "ai", "name": "AI", "type": "metered", "meter_code": "tokens"}))
    created(admin.post("/v1/features", json={"code": "img", "name": "Img", "type": "metered",
                                             "meter_code": "images"}))
    created(admin.post("/v1/plans", json={"code": "prepaid", "name": "Prepaid", "currency": "USD",
                                          "interval": "month"}))
    created(admin.post("/v1/plans/prepaid/versions", json={
        "prices": [{"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "0.01"}],
        "entitlements": [{"feature_code": "ai", "limit": "1000000", "reset": "month", "wallet_gated": True},
                         {"feature_code": "img", "limit": "100", "reset": "month"}]}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    created(admin.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "prepaid",
                                                  "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    return admin


def test_a_wallet_gated_feature_is_denied_while_no_wallet_paying_for_it_has_credits(prepaid, ledger):
    # With no wallet at all, nothing pays for the gated feature; the other one is not gated
    assert (check(prepaid, "ai")["allowed"], check(prepaid, "ai")["reason"]) == (False, "wallet_empty")
    assert check(prepaid, "img")["allowed"] is True
    # When a wallet (a credit is $0.01, 5 credits of overdraft) gets 10 credits, it is allowed
    wallet = created(prepaid.post("/v1/wallets", json={
        "customer": "acme", "name": "Credits", "credit_unit": "credit", "currency": "USD", "conversion_rate": "0.01",
        "overdraft_limit": "5"}))
    url = f"/v1/wallets/{wallet['id']}"
    created(prepaid.post(f"{url}/grants", json={"amount": "10", "kind": "paid"}))
    assert (check(prepaid, "ai")["allowed"], check(prepaid, "ai")["reason"]) == (True, "within_limit")
    # And usage acknowledged a moment ago counts at once, before any debit pass: into the overdraft is
    # still allowed, down to the overdraft's end is not
    use(prepaid, "u-1", "llm", "2026-01-05T00:00:00Z", tokens=14)
    assert (prepaid.get(url).json()["balance"], check(prepaid, "ai")["allowed"]) == ("-4", True)
    use(prepaid, "u-2", "llm", "2026-01-05T00:00:00Z", tokens=1)
    assert (prepaid.get(url).json()["balance"], check(prepaid, "ai")["reason"]) == ("-5", "wallet_empty")
    assert check(prepaid, "img")["allowed"] is True
    # And a grant makes it allowed again, whether or not the usage was debited yet
    created(prepaid.post(f"{url}/grants", json={"amount": "3", "kind": "promotional"}))
    assert check(prepaid, "ai")["allowed"] is True
    ledger.debit_usage()
    assert (prepaid.get(url).json()["balance"], check(prepaid, "ai")["allowed"]) == ("-2", True)
    # And a wallet that pays only for other features does not count for this one
    other = created(prepaid.post("/v1/wallets", json={
        "customer": "acme", "name": "Images", "credit_unit": "credit", "currency": "USD", "conversion_rate": "0.01",
        "applies_to": {"features": ["img"]}}))
    created(prepaid.post(f"/v1/wallets/{other['id']}/grants", json={"amount": "1000", "kind": "paid"}))
    use(prepaid, "u-3", "llm", "2026-01-05T00:00:00Z", tokens=3)
    assert check(prepaid, "ai")["reason"] == "wallet_empty"


def in_lanes(count: int, run: Callable[[int], None]) -> None:
    """`run(lane)` in `count` threads at once; once all have ended, the first failure of any is raised."""
    failures: list[BaseException] = []

    def lane(n: int) -> None:
        try:
            run(n)
        except BaseException as error:  # noqa: BLE001 (raised again below, in the test's thread)
            failures.append(error)

    threads = [threading.Thread(target=lane, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def test_concurrent_ingest_then_check_never_over_allows(acme, ledger, base_url):
    """8 threads each ingest 10 tokens and at once check for 10 more, 15 times: every check counts at
    least every event acknowledged before it began, and allows only what the limit leaves; one
    crossing of the month's limit is recorded however many checks race past it."""
    ledger.subscriptions.clock = lambda: at("2026-01-20T00:00:00")
    secret = acme.headers["Authorization"].removeprefix("Bearer ")
    lock, acknowledged, wrong = threading.Lock(), [0], []

    def run(lane: int) -> None:
        with client(base_url, secret) as http:
            for n in range(15):
                use(http, f"lane-{lane}-{n}", "llm", "2026-01-15T00:00:00Z", tokens=10)
                with lock:
                    acknowledged[0] += 1
                    before = acknowledged[0]
                found = check(http, "ai", "10")
                used = Decimal(found["used"])
                if used < 10 * before or found["allowed"] != (used + 10 <= 1200):
                    wrong.append((before, found))

    in_lanes(8, run)
    assert wrong == []
    assert check(acme, "ai", "0")["used"] == "1200"
    assert [(c.feature_code, c.limit) for c in _crossings(ledger)] == [("ai", 1000)]


def _and_beta_follower_stopped(acme, ledger) -> None:
    """beta on plan pro too, the clock on Jan 20 2026, and the counters' follower stopped: it runs
    when the test says."""
    ledger.counters.stop()
    ledger.subscriptions.clock = lambda: at("2026-01-20T00:00:00")
    created(acme.post("/v1/customers", json={"external_id": "beta", "name": "Beta", "currency": "USD"}))
    created(acme.post("/v1/subscriptions", json={"customer": "beta", "plan_code": "pro",
                                                 "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))


def test_a_check_counts_its_own_new_entries_and_the_log_follower_never_counts_them_again(acme, ledger,
                                                                                        monkeypatch):
    """A check reads only its customer's entries the counters have not followed yet; the follower,
    coming later over the same stretch of the log, adds the others' and skips what the check counted."""
    monkeypatch.setattr(ledger.usage, "recent", None)  # as on PostgreSQL: no ring of recent entries
    _and_beta_follower_stopped(acme, ledger)
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["0", "0"]  # both watched

    def ingest(first: int, count: int = 6) -> None:
        events = [{"event_id": f"e-{n}", "customer": ("acme", "beta")[n % 2], "event_name": "llm",
                   "timestamp": "2026-01-15T00:00:00Z", "properties": {"tokens": (10, 1)[n % 2]}}
                  for n in range(first, first + count)]
        assert acme.post("/v1/events/batch", json={"events": events}).json()["accepted"] == count

    ingest(0)
    assert check(acme, "ai")["used"] == "30"  # its own three entries, before the follower saw them
    ledger.counters.follow()
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["30", "3"]
    ingest(6)
    ledger.counters.follow()  # the follower first this time
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["60", "6"]
    assert acme.post("/v1/events/void", json={"customer": "acme", "event_ids": ["e-0"]}).status_code == 200
    assert check(acme, "ai")["used"] == "50"
    ingest(12)
    ledger.counters.follow()
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["80", "9"]
    ingest(18, 2 * SCAN_LIMIT)  # the follower far behind: the check catches everyone up itself
    assert check(acme, "ai")["used"] == str(80 + 10 * SCAN_LIMIT)
    ledger.counters.follow()
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == [
        str(80 + 10 * SCAN_LIMIT), str(9 + SCAN_LIMIT)]
    # the follower far behind again, and while it adds what it read, a chunk at a time, a check
    # catches everyone up: the follower's later chunks hold nothing new
    ingest(18 + 2 * SCAN_LIMIT, 2 * SCAN_LIMIT)
    between: list[str] = []

    def a_check_between_chunks(_: float) -> None:
        if not between:
            between.append(check(acme, "ai", customer="beta")["used"])

    monkeypatch.setattr(usage_counters, "time", SimpleNamespace(sleep=a_check_between_chunks))
    ledger.counters.follow()
    assert between == [str(9 + 2 * SCAN_LIMIT)]
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == [
        str(80 + 20 * SCAN_LIMIT), str(9 + 2 * SCAN_LIMIT)]


def test_counters_begun_for_many_customers_at_once_count_every_event_even_one_logged_during_their_read(
        acme, ledger):
    """`UsageCounters.prime` (a debit pass's) reads without holding the counters: an entry of a
    customer followed meanwhile is not in that read, so that customer's window is left for `used`."""
    _and_beta_follower_stopped(acme, ledger)
    tenant, tokens = str(_tenant(ledger)), ledger._meter_spec(_tenant(ledger), "tokens")
    window = (tokens, microseconds(at("2026-01-01T00:00:00")), microseconds(at("2026-02-01T00:00:00")))
    use(acme, "a-1", "llm", "2026-01-10T00:00:00Z", tokens=5)
    assert check(acme, "ai", customer="beta")["used"] == "0"  # beta watched (the follower then reads the log)

    def read_while_logging(*args):
        found = ledger._windows_readings(*args)  # read first: the entries below are not in it
        ledger.usage.append(tenant, [UsageEvent(event_id=f"{who}-late", customer=who, event_name="llm",
                                                timestamp=at("2026-01-11T00:00:00"), properties={"tokens": 7})
                                     for who in ("acme", "beta")], at("2026-01-20T00:00:00"))
        ledger.counters.follow()
        return found

    ledger.counters.prime(tenant, {"acme": [window], "beta": [window]}, read_while_logging)
    assert [ledger.counters.used(tenant, who, *window) for who in ("acme", "beta")] == [12, 7]
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["12", "7"]


def test_a_counter_begins_from_a_read_made_without_holding_the_counters(acme, ledger, monkeypatch):
    """A window's first read (seconds for a customer with a million events) holds no lock: another
    customer's check is answered meanwhile."""
    _and_beta_follower_stopped(acme, ledger)
    assert check(acme, "ai", customer="beta")["used"] == "0"  # beta's counter begun
    use(acme, "a-1", "llm", "2026-01-10T00:00:00Z", tokens=5)
    tenant, tokens = str(_tenant(ledger)), ledger._meter_spec(_tenant(ledger), "tokens")
    window = (tokens, microseconds(at("2026-01-01T00:00:00")), microseconds(at("2026-02-01T00:00:00")))
    read, answered, in_time = ledger.counters.readings_of, threading.Event(), []

    def slow_read(*args):
        other = threading.Thread(target=lambda: ledger.counters.used(tenant, "beta", *window) == 0 and answered.set(),
                                 daemon=True)
        other.start()
        other.join(5)
        in_time.append(answered.is_set())
        return read(*args)

    monkeypatch.setattr(ledger.counters, "readings_of", slow_read)
    # When acme's window begins, beta is asked for during its read
    assert ledger.counters.used(tenant, "acme", *window) == 5
    # Then beta was answered then, not after the read
    assert in_time == [True]


def test_entries_followed_while_a_counter_reads_count_once_and_a_void_then_counts_afresh(acme, ledger, monkeypatch):
    """Entries of the customer followed during its window's first read are not in that read: they are
    read from the log after it; a void among them has the window counted afresh."""
    _and_beta_follower_stopped(acme, ledger)
    tenant, tokens = str(_tenant(ledger)), ledger._meter_spec(_tenant(ledger), "tokens")
    window = (tokens, microseconds(at("2026-01-01T00:00:00")), microseconds(at("2026-02-01T00:00:00")))
    use(acme, "a-1", "llm", "2026-01-10T00:00:00Z", tokens=5)
    assert check(acme, "ai", customer="acme")["used"] == "5"  # acme watched (its month counted)
    month, read = (tokens, window[1], microseconds(at("2026-01-21T00:00:00"))), ledger.counters.readings_of

    def read_while_logging(*args):
        found = read(*args)  # read first: the entries below are not in it
        ledger.usage.append(tenant, [UsageEvent(event_id=f"late-{n}", customer="acme", event_name="llm",
                                                timestamp=at("2026-01-11T00:00:00"), properties={"tokens": 7})
                                     for n in range(3)], at("2026-01-20T00:00:00"))
        ledger.counters.follow()  # followed, added to acme's month counter
        return found

    monkeypatch.setattr(ledger.counters, "readings_of", read_while_logging)
    # When a new window of acme begins (to the 21st) while three entries are logged and followed
    # Then both windows count them once
    assert ledger.counters.used(tenant, "acme", *month) == 5 + 21
    assert ledger.counters.used(tenant, "acme", *window) == 5 + 21

    def read_while_voiding(*args):
        found = read(*args)
        ledger.usage.void(tenant, "acme", ["late-0"], "test", at("2026-01-20T00:00:00"))
        ledger.counters.follow()
        return found

    monkeypatch.setattr(ledger.counters, "readings_of", read_while_voiding)
    week = (tokens, window[1], microseconds(at("2026-01-14T00:00:00")))
    # And when one is voided during another window's read, that window is counted afresh
    assert ledger.counters.used(tenant, "acme", *week) == 5 + 14


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # on PostgreSQL a check runs in a thread anyway
def test_a_check_that_must_begin_a_counter_reads_off_the_event_loop(acme, ledger, monkeypatch):
    """On the embedded store a check runs on the event loop; one whose counter must begin from the
    customer's readings (seconds for a million events) is run again in a thread, the loop free."""
    ledger.subscriptions.clock = lambda: at("2026-01-20T00:00:00")
    use(acme, "a-1", "llm", "2026-01-10T00:00:00Z", tokens=5)
    read, loops = ledger.counters.readings_of, []

    def read_and_look(*args):
        try:
            loops.append(asyncio.get_running_loop())
        except RuntimeError:  # none: a thread of the pool
            loops.append(None)
        return read(*args)

    monkeypatch.setattr(ledger.counters, "readings_of", read_and_look)
    assert check(acme, "ai")["used"] == "5"
    assert check(acme, "ai")["used"] == "5"  # counted: no read
    assert loops == [None]


def test_a_check_whose_counters_fell_far_behind_the_log_counts_its_customer_afresh(acme, ledger, monkeypatch):
    """More than FOLLOW_LIMIT entries behind (the follower stopped, no ring), a check drops every
    customer's counters rather than read them all: its own customer's too, counted afresh."""
    monkeypatch.setattr(ledger.usage, "recent", None)  # as on PostgreSQL: no ring of recent entries
    monkeypatch.setattr(usage_counters, "SCAN_LIMIT", 10)
    monkeypatch.setattr(usage_counters, "FOLLOW_LIMIT", 40)
    _and_beta_follower_stopped(acme, ledger)
    assert check(acme, "ai")["used"] == "0"  # watched
    events = [{"event_id": f"b-{n}", "customer": "beta", "event_name": "llm", "timestamp": "2026-01-15T00:00:00Z",
               "properties": {"tokens": 1}} for n in range(100)]
    events.append({"event_id": "a-0", "customer": "acme", "event_name": "llm", "timestamp": "2026-01-15T00:00:00Z",
                   "properties": {"tokens": 7}})
    assert acme.post("/v1/events/batch", json={"events": events}).json()["accepted"] == 101
    assert check(acme, "ai")["used"] == "7"
    assert check(acme, "ai", customer="beta")["used"] == "100"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL servers may be on other machines
def test_what_any_server_on_the_embedded_store_commits_counts_from_the_ring_and_gaps_from_the_log(
        acme, ledger, database_url, monkeypatch):
    """Each group committed on the embedded store, by this server or another, is copied to the ring of
    recent entries: a check after it reads nothing from the log. A group holding a duplicate, or a
    void, is not copied: the check reads those entries from the log. Each event counts once."""
    _and_beta_follower_stopped(acme, ledger)
    database, reads = ledger.counters.log.database, []
    read = database.query_rows
    monkeypatch.setattr(database, "query_rows", lambda *query: reads.append(query) or read(*query))
    tenant = str(_tenant(ledger))

    def ingest(*ids: str) -> int:
        events = [{"event_id": event_id, "customer": "beta" if event_id.startswith("b") else "acme",
                   "event_name": "llm", "timestamp": "2026-01-15T00:00:00Z", "properties": {"tokens": 10}}
                  for event_id in ids]
        return acme.post("/v1/events/batch", json={"events": events}).json()["accepted"]

    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["0", "0"]
    assert ingest("e-1", "e-2", "b-1") == 3
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["20", "10"]
    other = Ledger(database_url)  # another server on the same store
    try:
        other.usage.append(tenant, [UsageEvent(event_id="o-1", customer="acme", event_name="llm",
                                               timestamp=at("2026-01-15T00:00:00"), properties={"tokens": 5})],
                           at("2026-01-20T00:00:00"))
        assert check(acme, "ai")["used"] == "25"
        assert ingest("e-3", "b-2") == 2
        assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["35", "20"]
        assert reads == []  # all from the ring
        assert ingest("e-1", "e-4") == 1  # a duplicate: not copied
        assert check(acme, "ai")["used"] == "45" and len(reads) == 1
        other.usage.void(tenant, "acme", ["o-1"], "test", at("2026-01-20T00:00:00"))
        assert check(acme, "ai")["used"] == "40" and len(reads) == 2
        ledger.counters.follow()
        assert len(reads) == 3
        assert ingest("e-5", "b-3") == 2  # after the follower read the gap: from the ring again
        assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["50", "30"]
        assert len(reads) == 3
    finally:
        other.close()


def test_a_customer_first_checked_between_a_commit_and_its_publication_counts_that_commit(acme, ledger,
                                                                                        monkeypatch):
    """The counters' follower may read entries committed but not yet published: a customer whose
    counters begin then must count them from its readings, since the follower added them before."""
    monkeypatch.setattr(ledger.usage, "recent", None)  # as on PostgreSQL: the follower reads the log
    _and_beta_follower_stopped(acme, ledger)
    assert check(acme, "ai")["used"] == "0"  # acme watched: the follower reads the log
    publish, first_check = ledger.usage._published, []

    def follow_and_check_beta_first(last: int) -> None:
        ledger.counters.follow()  # reads the entries just committed too
        first_check.append(check(acme, "ai", customer="beta")["used"])
        publish(last)

    use(acme, "e-1", "llm", "2026-01-15T00:00:00Z", tokens=10)  # published: the follower has it to read
    monkeypatch.setattr(ledger.usage, "_published", follow_and_check_beta_first)
    answer = acme.post("/v1/events", json={"event_id": "b-1", "customer": "beta", "event_name": "llm",
                                           "timestamp": "2026-01-15T00:00:00Z", "properties": {"tokens": 7}})
    assert answer.status_code == 202
    monkeypatch.setattr(ledger.usage, "_published", publish)
    assert first_check == ["7"]  # committed, so counted (not acknowledged yet: it need not be)
    assert [check(acme, "ai", customer=who)["used"] for who in ("acme", "beta")] == ["10", "7"]


def test_across_serving_processes_a_check_counts_every_event_acknowledged_before_it(database_url, tmp_path):
    """`tally serve` with TALLY_WORKERS=2, each request on a fresh connection (so the kernel hands it
    to either process): 4 lanes each ingest 7 tokens, then check; every check counts at least every
    event acknowledged before it began, whichever process took the event and whichever answers."""
    env = tally_env(database_url, TALLY_API_KEY="freshness-test-admin-key", TALLY_WORKERS="2")
    with serving(env, tmp_path) as server:
        port = int(server.base_url.rpartition(":")[2])
        deadline = time.monotonic() + 30
        while listeners(port) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listeners(port) == 2
        set_up_http(server.base_url, "freshness-test-admin-key", 1)
        headers = {"Authorization": "Bearer freshness-test-admin-key"}
        lock, acknowledged, wrong = threading.Lock(), [0], []

        def run(lane: int) -> None:
            for n in range(25):
                event = {"event_id": f"lane-{lane}-{n}", "customer": bench_customer(0), "event_name": "llm",
                         "timestamp": datetime.now(UTC).isoformat(), "properties": {"tokens": 7}}
                assert httpx.post(f"{server.base_url}/v1/events", json=event, headers=headers).status_code == 202
                with lock:
                    acknowledged[0] += 1
                    before = acknowledged[0]
                found = httpx.post(f"{server.base_url}/v1/entitlements/check", headers=headers,
                                   json={"customer": bench_customer(0), "feature_code": "ai"}).json()
                if Decimal(found["used"]) < 7 * before:
                    wrong.append((before, found["used"]))

        in_lanes(4, run)
        assert wrong == []
        assert acknowledged[0] == 100


def test_another_server_s_changes_count_in_the_very_next_check(acme, ledger, database_url):
    """A second ledger on the same store stands for another `tally serve`: its overrides, usage,
    subscriptions and key revocations count in this server's next answer, whatever it kept."""
    ledger.subscriptions.clock = lambda: at("2026-01-10T00:00:00")
    other = Ledger(database_url)
    other.subscriptions.clock = ledger.subscriptions.clock
    try:
        tenant, by = _tenant(ledger), Actor("test:other-server")
        assert (check(acme, "ai")["used"], check(acme, "ai")["limit"]) == ("0", "1000")  # kept from here on
        other.command(other.override, by, tenant, "acme", OverrideSpec(feature_code="ai", limit=Decimal(50)))
        other.usage.append(str(tenant), [UsageEvent(event_id="o-1", customer="acme", event_name="llm",
                                                    timestamp=at("2026-01-09T00:00:00"), properties={"tokens": 40})],
                           at("2026-01-10T00:00:00"))
        assert (check(acme, "ai")["used"], check(acme, "ai")["limit"]) == ("40", "50")
        other.usage.void(str(tenant), "acme", ["o-1"], "test", at("2026-01-10T00:00:00"))
        assert check(acme, "ai")["used"] == "0"
        created(acme.post("/v1/customers", json={"external_id": "beta", "name": "Beta", "currency": "USD"}))
        assert check(acme, "sso", customer="beta")["reason"] == "no_subscription"
        other.command(other.subscriptions.start, by, tenant, SubscriptionSpec(
            customer="beta", plan_code="pro", start_at=at("2026-01-01T00:00:00"), billing_anchor="calendar"))
        assert check(acme, "sso", customer="beta")["reason"] == "enabled"
        key_id = private_id("api_keys", acme.get("/v1/api-keys").json()["data"][0]["id"])
        other.command(other.tenants.revoke_key, by, tenant, key_id)
        assert_problem(acme.post("/v1/entitlements/check", json={"customer": "acme", "feature_code": "ai"}), 401)
    finally:
        other.close()


VALUES = st.one_of(st.integers(-1000, 1000), st.decimals(-100, 100, places=3).map(str), st.none(),
                   st.sampled_from(["x", "", "1e3", True]))


@settings(max_examples=300, deadline=None)
@given(aggregation=st.sampled_from(["count", "sum", "max", "unique_count", "latest"]),
       values=st.lists(st.tuples(st.integers(0, 20), VALUES), max_size=30), order=st.randoms())
def test_a_running_counter_equals_the_aggregate_of_its_readings_in_any_order(aggregation, values, order):
    """What the entitlement counters keep, reading by reading as the log brings them (late events
    too), is what the meter's aggregation gives over them all."""
    meter = MeterSpec(code="m", name="M", event_name="e", aggregation=aggregation,
                      field=None if aggregation == "count" else "v")
    readings = [Reading(t, position, {} if v is None else {"v": v}) for position, (t, v) in enumerate(values, 1)]
    running = Running(meter)
    for reading in order.sample(readings, len(readings)):
        running.add(reading)
    assert running.value == aggregate(meter, readings, 0, 21)
