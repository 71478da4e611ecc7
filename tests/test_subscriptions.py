"""Subscriptions over HTTP, on both stores: start, read, list, amend, cancel, and the contract history."""

from datetime import UTC, datetime

import pytest
from conftest import assert_problem, client, created, open_tenant, refused

FLAT = {"type": "flat", "currency": "USD", "amount": "49.00", "pay_in": "advance"}
NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)


@pytest.fixture
def shop(admin, ledger):
    """A monthly USD plan with versions 1 and 2 (v2 with a 14-day trial), customers in USD and EUR,
    and a clock stopped at NOW."""
    ledger.subscriptions.clock = lambda: NOW
    created(admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}))
    created(admin.post("/v1/plans/pro/versions", json={"prices": [FLAT]}))
    created(admin.post("/v1/plans/pro/versions", json={"prices": [FLAT], "trial_days": 14}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    created(admin.post("/v1/customers", json={"external_id": "euro", "name": "Euro", "currency": "EUR"}))
    return admin


def start(shop, **fields):
    body = {"customer": "acme", "plan_code": "pro", "start_at": "2026-01-01T00:00:00Z",
            "billing_anchor": "calendar", **fields}
    return shop.post("/v1/subscriptions", json=body)


def test_a_subscription_starts_on_a_pinned_version_or_the_latest_with_its_trial(shop):
    # When acme subscribes pinned to version 1, and again with no version
    pinned = created(start(shop, plan_version=1))
    latest = created(start(shop, start_at="2026-11-20T09:00:00+02:00", billing_anchor="anniversary"))
    # Then the first is on v1 with no trial; the second on v2 with v2's 14-day trial, its times in UTC
    assert (pinned["plan_version"], pinned["trial_days"], pinned["billing_start"]) == (1, 0, "2026-01-01T00:00:00Z")
    assert pinned["id"].startswith("sub_") and pinned["status"] == "active" and pinned["ends_at"] is None
    assert (latest["plan_version"], latest["trial_days"]) == (2, 14)
    assert (latest["start_at"], latest["billing_start"]) == ("2026-11-20T07:00:00Z", "2026-12-04T07:00:00Z")
    # And both read back, and list under the customer in creation order
    assert shop.get(f"/v1/subscriptions/{pinned['id']}").json() == pinned
    listed = shop.get("/v1/subscriptions", params={"customer": "acme", "limit": 1}).json()
    assert ([s["id"] for s in listed["data"]], listed["has_more"]) == ([pinned["id"]], True)
    after = shop.get("/v1/subscriptions", params={"customer": "acme", "starting_after": pinned["id"]}).json()
    assert [s["id"] for s in after["data"]] == [latest["id"]]
    # And an explicit trial_days wins over the version's
    assert created(start(shop, plan_version=2, trial_days=0))["billing_start"] == "2026-01-01T00:00:00Z"


@pytest.mark.parametrize(("fields", "field"), [
    ({"customer": "nobody"}, "customer"),
    ({"plan_code": "gold"}, "plan_code"),
    ({"plan_version": 3}, "plan_version"),
    ({"customer": "euro"}, "plan_code"),  # the plan bills in USD, the customer in EUR
    ({"billing_anchor": "weekly"}, "billing_anchor"),
    ({"start_at": "2026-01-01T00:00:00"}, "start_at"),  # no offset
    ({"trial_days": -1}, "trial_days"),
    ({"phases": []}, "phases"),  # not yet: refused, never ignored
])
def test_a_bad_subscription_is_refused_naming_the_field_and_records_nothing(shop, ledger, fields, field):
    before = ledger.events_recorded()
    assert refused(start(shop, **fields)) == [field]
    assert ledger.events_recorded() == before


def test_an_amendment_is_a_new_contract_version_with_who_when_and_why(shop, ledger):
    # Given acme on version 1
    subscription = created(start(shop, plan_version=1))
    url = f"/v1/subscriptions/{subscription['id']}"
    # When it is upgraded now, then downgraded from a later time
    upgraded = shop.post(f"{url}/amendments", json={"reason": "needs more", "changes": {"plan_version": 2}})
    later = shop.post(f"{url}/amendments", json={"effective_at": "2027-01-01T00:00:00Z", "reason": "budget",
                                                   "changes": {"plan_version": 1}})
    # Then the subscription follows, and the history names each change, its time, its reason and its author
    assert (upgraded.status_code, upgraded.json()["plan_version"]) == (200, 2)
    assert later.json()["plan_version"] == 1
    history = shop.get(f"{url}/versions").json()["data"]
    assert [(v["version"], v["kind"], v["plan_version"], v["effective_at"], v["reason"]) for v in history] == [
        (1, "started", 1, "2026-01-01T00:00:00Z", None),
        (2, "amended", 2, "2026-11-18T15:30:00Z", "needs more"),
        (3, "amended", 1, "2027-01-01T00:00:00Z", "budget"),
    ]
    assert all(v["created_by"].startswith("key_") for v in history)
    # And a change to the version already in force, or before the last change, or before the start, is refused
    before = ledger.events_recorded()
    assert refused(shop.post(f"{url}/amendments", json={"effective_at": "2027-02-01T00:00:00Z", "reason": "x",
                                                        "changes": {"plan_version": 1}})) == ["changes.plan_version"]
    assert refused(shop.post(f"{url}/amendments", json={"effective_at": "2026-12-01T00:00:00Z", "reason": "x",
                                                        "changes": {"plan_version": 2}})) == ["effective_at"]
    assert refused(shop.post(f"{url}/amendments", json={"reason": "x", "changes": {"plan_version": 7}})) == [
        "changes.plan_version"]
    assert refused(shop.post(f"{url}/amendments", json={"changes": {"plan_version": 2}})) == ["reason"]
    assert ledger.events_recorded() == before


@pytest.mark.parametrize(("version", "anchor", "start_at", "at", "ends_at"), [
    (1, "calendar", "2026-01-01T00:00:00Z", "period_end", "2026-12-01T00:00:00Z"),
    (1, "anniversary", "2026-01-31T10:00:00Z", "period_end", "2026-11-30T10:00:00Z"),  # the 31st, clamped
    (2, "anniversary", "2026-01-31T10:00:00Z", "period_end", "2026-12-14T10:00:00Z"),  # after a 14-day trial
    (1, "calendar", "2026-01-01T00:00:00Z", "now", "2026-11-18T15:30:00Z"),
    (2, "calendar", "2026-11-10T00:00:00Z", "period_end", "2026-11-24T00:00:00Z"),  # in its trial: ends with it
    (1, "calendar", "2027-03-01T00:00:00Z", "now", "2027-03-01T00:00:00Z"),  # not started: ends at its start
])
def test_a_cancellation_ends_now_or_at_the_period_end(shop, ledger, version, anchor, start_at, at, ends_at):
    # Given a subscription (version 2 has a 14-day trial)
    subscription = created(start(shop, plan_version=version, billing_anchor=anchor, start_at=start_at))
    url = f"/v1/subscriptions/{subscription['id']}"
    # When it is cancelled at NOW (2026-11-18 15:30 UTC)
    cancelled = shop.post(f"{url}/cancel", json={"at": at, "reason": "moving on"})
    # Then it ends then, and the history says so
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["ends_at"]) == ("cancelled", ends_at)
    last = shop.get(f"{url}/versions").json()["data"][-1]
    assert (last["kind"], last["ends_at"], last["reason"]) == ("cancelled", ends_at, "moving on")
    # And a second cancellation or an amendment is a conflict that changes nothing
    before = ledger.events_recorded()
    assert_problem(shop.post(f"{url}/cancel", json={"at": "now"}), 409)
    assert_problem(shop.post(f"{url}/amendments", json={"reason": "x", "changes": {"plan_version": 1}}), 409)
    assert ledger.events_recorded() == before


def test_subscriptions_are_walled_by_tenant_and_by_portal_customer(shop, ledger, base_url):
    # Given acme's subscription, a portal key for acme and one for another customer
    subscription = created(start(shop))
    created(shop.post("/v1/customers", json={"external_id": "globex", "name": "Globex", "currency": "USD"}))
    theirs = created(start(shop, customer="globex"))
    acme_key = created(shop.post("/v1/api-keys", json={"role": "portal", "customer": "acme"}))["key"]
    _, other_admin = open_tenant(ledger, "Other")
    with client(base_url, acme_key) as portal, client(base_url, other_admin) as other:
        # Then the portal key reads acme's, not globex's, and lists only acme's
        assert portal.get(f"/v1/subscriptions/{subscription['id']}").status_code == 200
        assert_problem(portal.get(f"/v1/subscriptions/{theirs['id']}"), 404)
        assert_problem(portal.get(f"/v1/subscriptions/{theirs['id']}/versions"), 404)
        assert [s["id"] for s in portal.get("/v1/subscriptions").json()["data"]] == [subscription["id"]]
        assert portal.get("/v1/subscriptions", params={"customer": "globex"}).json()["data"] == []
        # And another tenant finds nothing, and an id that is not a subscription's is a 404
        assert_problem(other.get(f"/v1/subscriptions/{subscription['id']}"), 404)
        assert_problem(other.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "now"}), 404)
        assert_problem(shop.get("/v1/subscriptions/cus_0123"), 404)
    assert refused(shop.get("/v1/subscriptions")) == ["customer"]
