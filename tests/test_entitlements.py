"""Entitlement checks through the HTTP API, on both stores: metered limits in UTC half-open reset
windows, soft vs hard limits, boolean and config features, and usage counted the moment it is
acknowledged."""

from datetime import UTC, datetime
from uuid import UUID

import pytest
from conftest import assert_problem, created


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


def check(admin, feature: str, quantity: str | None = None) -> dict:
    body = {"customer": "acme", "feature_code": feature, **({"quantity": quantity} if quantity else {})}
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
