"""The catalogue over HTTP (API.md "Catalogue"): meters, features, pricing units, plans and their
immutable versions. Each test runs on SQLite and PostgreSQL, and checks the stored events as well
as the documents the API answers."""

import copy
from typing import Any
from uuid import UUID

import httpx
from conftest import client, created, open_tenant, refused

from api.ledger import Ledger
from domain.feature import Feature
from domain.meter import Meter
from domain.plan import Plan
from domain.plan_version import PlanVersion
from domain.pricing_unit import PricingUnit

AGGREGATIONS = ("count", "sum", "max", "unique_count", "latest", "weighted_sum")
INTERVALS = ("day", "week", "month", "quarter", "year")

# A catalogue to price against: four meters, three kinds of feature, a credit unit, a USD plan.
METERS = [
    {"code": "api_calls", "name": "API calls", "event_name": "api.call", "aggregation": "count"},
    {"code": "gpu_hours", "name": "GPU hours", "event_name": "gpu.used", "aggregation": "sum", "field": "hours"},
    {"code": "payments", "name": "Payments", "event_name": "payment.captured", "aggregation": "sum",
     "field": "amount"},
    {"code": "tokens", "name": "Tokens", "event_name": "llm.call", "aggregation": "sum", "field": "tokens"},
]
FEATURES = [
    {"code": "api", "name": "API access", "type": "metered", "meter_code": "api_calls", "unit": "calls"},
    {"code": "sso", "name": "Single sign-on", "type": "boolean"},
    {"code": "support_tier", "name": "Support tier", "type": "config"},
]
CREDITS = {"code": "credits", "name": "Credits", "currency": "USD", "conversion_rate": "0.01"}
PRO = {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}

# One version holding every type of price, a price in credits, and every kind of entitlement.
EVERY_PRICE = [
    {"type": "flat", "currency": "USD", "pay_in": "advance", "amount": "49.00"},
    {"type": "per_unit", "meter_code": "api_calls", "currency": "USD", "unit_amount": "0.002"},
    {"type": "package", "meter_code": "api_calls", "currency": "USD", "package_amount": "5.00",
     "package_size": "1000", "free_units": "100"},
    {"type": "graduated", "meter_code": "gpu_hours", "currency": "USD", "tiers": [
        {"up_to": "0.1", "unit_amount": "10.00", "flat_amount": "1.00"},
        {"up_to": "1", "unit_amount": "2.00"},
        {"up_to": None, "unit_amount": "1.00", "flat_amount": "0.50"},
    ]},
    {"type": "volume", "meter_code": "gpu_hours", "currency": "USD", "tiers": [
        {"up_to": "100", "unit_amount": "3.00", "flat_amount": "10.00"},
        {"up_to": None, "unit_amount": "2.50"},
    ]},
    {"type": "percentage", "meter_code": "payments", "currency": "USD", "rate": "2.9", "fixed_fee": "0.30",
     "min_per_transaction": "0.50", "max_per_transaction": "10.00", "free_units": "10", "free_amount": "100.00"},
    {"type": "per_unit", "meter_code": "tokens", "pricing_unit": "credits", "unit_amount": "0.000002"},
]
EVERY_ENTITLEMENT = [
    {"feature_code": "api", "limit": "10000", "soft_limit": "12000", "reset": "period"},
    {"feature_code": "sso", "enabled": True},
    {"feature_code": "support_tier", "value": "priority"},
]
EVERY_KIND = {"prices": EVERY_PRICE, "entitlements": EVERY_ENTITLEMENT, "minimum_commitment": "100.00",
              "trial_days": 14}


def holds(answered: Any, sent: Any) -> bool:
    """Everything that was sent is answered (the answer may add defaults)."""
    if isinstance(sent, dict):
        return isinstance(answered, dict) and all(k in answered and holds(answered[k], v) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(answered, list) and len(answered) == len(sent) and all(map(holds, answered, sent))
    return answered == sent


def stored_events(ledger: Ledger, public_id: str) -> list[Any]:
    """The events the store holds for the aggregate behind a public id (`mtr_<hex>`)."""
    aggregate_id = UUID(hex=public_id.partition("_")[2])
    stored = ledger.catalogue.recorder.select_events(aggregate_id)
    return [ledger.catalogue.mapper.to_domain_event(event) for event in stored]


def define_catalogue(admin: httpx.Client) -> None:
    for meter in METERS:
        created(admin.post("/v1/meters", json=meter))
    for feature in FEATURES:
        created(admin.post("/v1/features", json=feature))
    created(admin.post("/v1/pricing-units", json=CREDITS))
    created(admin.post("/v1/plans", json=PRO))


# --- Meters -----------------------------------------------------------------------------------

def test_a_meter_can_aggregate_in_each_of_the_six_ways(admin, ledger):
    # Given a tenant with no meters
    for aggregation in AGGREGATIONS:
        # When a meter of each aggregation is defined (all but count name the property they aggregate)
        body = {"code": f"m_{aggregation}", "name": aggregation, "event_name": "thing.happened",
                "aggregation": aggregation}
        if aggregation != "count":
            body["field"] = "value"
        meter = created(admin.post("/v1/meters", json=body))
        # Then it answers the meter, and the store holds one Meter.Defined carrying the definition
        assert holds(meter, body) and meter["id"].startswith("mtr_")
        assert meter["field"] == body.get("field")
        [defined] = stored_events(ledger, meter["id"])
        assert isinstance(defined, Meter.Defined)
        assert (defined.spec.aggregation, defined.spec.field) == (aggregation, body.get("field"))
    assert [m["aggregation"] for m in admin.get("/v1/meters").json()["data"]] == list(AGGREGATIONS)


def test_a_meter_keeps_its_filters_and_group_by(admin, ledger):
    # Given a meter counting only EU and US calls of two models, grouped by model and region
    body = {"code": "llm_tokens", "name": "LLM tokens", "event_name": "llm.call", "aggregation": "sum",
            "field": "tokens", "filters": {"region": ["eu", "us"], "model": ["gpt-4o", "claude"]},
            "group_by": ["model", "region"]}
    # When it is defined
    meter = created(admin.post("/v1/meters", json=body))
    # Then the filters and group_by are stored and returned as given
    assert meter["filters"] == body["filters"] and meter["group_by"] == body["group_by"]
    assert admin.get("/v1/meters/llm_tokens").json() == meter
    [defined] = stored_events(ledger, meter["id"])
    assert defined.spec.filters == body["filters"] and defined.spec.group_by == ("model", "region")


REFUSED_METERS = {
    "count with a field": ({"aggregation": "count", "field": "tokens"}, "field"),
    "sum without a field": ({"aggregation": "sum"}, "field"),
    "weighted_sum without a field": ({"aggregation": "weighted_sum"}, "field"),
    "unknown aggregation": ({"aggregation": "median", "field": "tokens"}, "aggregation"),
    "group_by naming a property twice": ({"aggregation": "sum", "field": "t", "group_by": ["a", "a"]}, "group_by"),
    "a filter allowing no value": ({"aggregation": "sum", "field": "t", "filters": {"model": []}}, "filters"),
}


def test_a_meter_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    before = ledger.events_recorded()
    for rule, (body, field) in REFUSED_METERS.items():
        # When a meter breaking one rule is defined
        response = admin.post("/v1/meters", json={"code": "m", "name": "M", "event_name": "e", **body})
        # Then it is a 422 naming the field (inside filters msgspec says `filters[...]`)
        assert field in [named.partition("[")[0] for named in refused(response)], (rule, response.text)
    # And nothing is recorded
    assert ledger.events_recorded() == before
    assert admin.get("/v1/meters").json() == {"data": [], "has_more": False}


# --- Features ---------------------------------------------------------------------------------

def test_features_are_metered_by_an_existing_meter_or_are_switches_or_values(admin, ledger):
    # Given a meter of API calls
    created(admin.post("/v1/meters", json=METERS[0]))
    # When a metered, a boolean and a config feature are defined
    features = [created(admin.post("/v1/features", json=feature)) for feature in FEATURES]
    # Then each is answered as given, and recorded once
    for feature, body in zip(features, FEATURES, strict=True):
        assert holds(feature, body) and feature["id"].startswith("feat_")
        [defined] = stored_events(ledger, feature["id"])
        assert isinstance(defined, Feature.Defined) and defined.spec.type == body["type"]
    assert features[0]["meter_code"] == "api_calls" and features[1]["meter_code"] is None


REFUSED_FEATURES = {
    "metered by an unknown meter": ({"type": "metered", "meter_code": "no_such_meter"}, "meter_code"),
    "metered by no meter": ({"type": "metered"}, "meter_code"),
    "a boolean with a meter": ({"type": "boolean", "meter_code": "api_calls"}, "meter_code"),
    "an unknown type": ({"type": "quota"}, "type"),
}


def test_a_feature_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    # Given a meter of API calls
    created(admin.post("/v1/meters", json=METERS[0]))
    before = ledger.events_recorded()
    for rule, (body, field) in REFUSED_FEATURES.items():
        # When a feature breaking one rule is defined
        response = admin.post("/v1/features", json={"code": "f", "name": "F", **body})
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # And nothing is recorded
    assert ledger.events_recorded() == before


# --- Pricing units ----------------------------------------------------------------------------

def test_a_pricing_unit_records_the_fiat_value_of_one_unit(admin, ledger):
    # When credits worth 0.01 USD each are defined
    unit = created(admin.post("/v1/pricing-units", json=CREDITS))
    # Then the rate is kept exactly, as a string, and recorded
    assert holds(unit, CREDITS) and unit["id"].startswith("pu_")
    [defined] = stored_events(ledger, unit["id"])
    assert isinstance(defined, PricingUnit.Defined) and str(defined.spec.conversion_rate) == "0.01"


REFUSED_PRICING_UNITS = {
    "a zero rate": ({"conversion_rate": "0"}, "conversion_rate"),
    "a negative rate": ({"conversion_rate": "-0.01"}, "conversion_rate"),
    "a rate as a JSON number": ({"conversion_rate": 0.01}, "conversion_rate"),
    "a rate that is no number": ({"conversion_rate": "a cent"}, "conversion_rate"),
    "an unknown currency": ({"currency": "XXX"}, "currency"),
}


def test_a_pricing_unit_needs_a_positive_decimal_string_rate_in_a_known_currency(admin, ledger):
    before = ledger.events_recorded()
    for rule, (change, field) in REFUSED_PRICING_UNITS.items():
        # When a pricing unit is defined with a bad rate or currency
        response = admin.post("/v1/pricing-units", json={**CREDITS, **change})
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # And nothing is recorded
    assert ledger.events_recorded() == before


# --- Plans ------------------------------------------------------------------------------------

def test_a_plan_bills_at_each_interval_and_starts_with_no_version(admin, ledger):
    for interval in INTERVALS:
        # When a plan of each interval is defined
        plan = created(admin.post("/v1/plans", json={"code": interval, "name": interval, "currency": "EUR",
                                                     "interval": interval}))
        # Then it bills at that interval, has no version yet, and is recorded once
        assert (plan["interval"], plan["currency"], plan["latest_version"]) == (interval, "EUR", 0)
        [defined] = stored_events(ledger, plan["id"])
        assert isinstance(defined, Plan.Defined) and defined.spec.interval == interval


REFUSED_PLANS = {
    "a lowercase currency": ({"currency": "usd"}, "currency"),
    "an unknown currency": ({"currency": "ABC"}, "currency"),
    "an unknown interval": ({"interval": "fortnight"}, "interval"),
    "a code with spaces": ({"code": "no spaces"}, "code"),
}


def test_a_plan_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    before = ledger.events_recorded()
    for rule, (change, field) in REFUSED_PLANS.items():
        # When a plan is defined with a bad currency, interval or code
        response = admin.post("/v1/plans", json={**PRO, **change})
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # And nothing is recorded
    assert ledger.events_recorded() == before


# --- Plan versions ----------------------------------------------------------------------------

def test_a_version_holds_every_price_type_entitlement_commitment_and_trial(admin, ledger):
    # Given meters, features, credits and the Pro plan
    define_catalogue(admin)
    # When a version with all six price types, a price in credits and every entitlement is published
    version = created(admin.post("/v1/plans/pro/versions", json=EVERY_KIND))
    # Then it is version 1 and answers every price and entitlement as given (decimals as strings)
    assert (version["plan_code"], version["version"]) == ("pro", 1) and version["id"].startswith("pv_")
    assert holds(version, EVERY_KIND)
    assert [price["type"] for price in version["prices"]] == [
        "flat", "per_unit", "package", "graduated", "volume", "percentage", "per_unit"]
    assert version["prices"][1]["pay_in"] == "arrears"  # a metered price is paid in arrears
    assert version["prices"][3]["tiers"][1]["flat_amount"] == "0"
    assert admin.get("/v1/plans/pro/versions/1").json() == version
    # And the store holds one PlanVersion.Published with exact decimals, by the admin key
    [published] = stored_events(ledger, version["id"])
    assert isinstance(published, PlanVersion.Published) and published.number == 1
    assert published.actor == version["created_by"] and published.actor.startswith("key_")
    assert [str(tier.up_to) for tier in published.spec.prices[3].tiers] == ["0.1", "1", "None"]
    assert str(published.spec.prices[6].unit_amount) == "0.000002"
    assert str(published.spec.minimum_commitment) == "100.00" and published.spec.trial_days == 14
    # And the plan records that version 1 was published
    plan = admin.get("/v1/plans/pro").json()
    assert plan["latest_version"] == 1
    assert [type(e) for e in stored_events(ledger, plan["id"])] == [Plan.Defined, Plan.VersionPublished]


def test_versions_are_numbered_1_2_3_listed_in_order_and_the_plan_follows_the_latest(admin):
    # Given the Pro plan
    define_catalogue(admin)
    # When three versions are published, each with a different flat fee
    fees = ["10.00", "20.00", "30.00"]
    numbers = []
    for fee in fees:
        version = created(admin.post("/v1/plans/pro/versions", json={
            "prices": [{"type": "flat", "currency": "USD", "amount": fee}]}))
        numbers.append(version["version"])
        # Then the plan's latest_version follows each publish
        assert admin.get("/v1/plans/pro").json()["latest_version"] == version["version"]
    assert numbers == [1, 2, 3]
    # And they are listed in order, each readable by its number
    listed = admin.get("/v1/plans/pro/versions").json()
    assert [v["version"] for v in listed["data"]] == [1, 2, 3] and listed["has_more"] is False
    assert [v["prices"][0]["amount"] for v in listed["data"]] == fees
    for version in listed["data"]:
        assert admin.get(f"/v1/plans/pro/versions/{version['version']}").json() == version
    page = admin.get("/v1/plans/pro/versions", params={"limit": 2}).json()
    assert [v["version"] for v in page["data"]] == [1, 2] and page["has_more"] is True
    rest = admin.get("/v1/plans/pro/versions", params={"starting_after": page["data"][1]["id"]}).json()
    assert [v["version"] for v in rest["data"]] == [3] and rest["has_more"] is False
    # And there is no version 4, and an unknown plan has no versions
    assert admin.get("/v1/plans/pro/versions/4").status_code == 404
    for not_a_number in ("latest", "1.0", "-1", "²"):
        assert admin.get(f"/v1/plans/pro/versions/{not_a_number}").status_code == 404, not_a_number
    assert admin.get("/v1/plans/basic/versions").status_code == 404
    assert admin.post("/v1/plans/basic/versions", json={"prices": []}).status_code == 404


def test_version_numbers_are_counted_per_plan(admin):
    # Given two plans
    define_catalogue(admin)
    created(admin.post("/v1/plans", json={**PRO, "code": "team"}))
    flat = {"prices": [{"type": "flat", "currency": "USD", "amount": "1.00"}]}
    # When Pro gets two versions and Team one
    pro = [created(admin.post("/v1/plans/pro/versions", json=flat))["version"] for _ in range(2)]
    team = created(admin.post("/v1/plans/team/versions", json=flat))["version"]
    # Then each plan counts from 1, and lists only its own
    assert (pro, team) == ([1, 2], 1)
    assert [v["plan_code"] for v in admin.get("/v1/plans/team/versions").json()["data"]] == ["team"]


def test_a_published_version_never_changes(admin, ledger):
    # Given version 1 of Pro
    define_catalogue(admin)
    version = created(admin.post("/v1/plans/pro/versions", json=EVERY_KIND))
    # When a client tries to replace, patch or delete it
    for method in ("PUT", "PATCH", "DELETE"):
        response = admin.request(method, "/v1/plans/pro/versions/1", json={"prices": []})
        # Then there is no such route
        assert response.status_code == 405, (method, response.text)
    # And the version reads the same, its aggregate still has exactly its one event
    assert admin.get("/v1/plans/pro/versions/1").json() == version
    assert [type(e) for e in stored_events(ledger, version["id"])] == [PlanVersion.Published]


def test_a_version_published_by_a_racing_publisher_is_a_conflict_and_records_nothing(admin, ledger, monkeypatch):
    # Given Pro at version 1, and a publisher that read Pro before version 1 was published
    define_catalogue(admin)
    tenant_id = stored_events(ledger, admin.get("/v1/plans/pro").json()["id"])[0].tenant_id
    stale = ledger.catalogue.plan(tenant_id, "pro")
    first = created(admin.post("/v1/plans/pro/versions", json=EVERY_KIND))
    before = ledger.events_recorded()
    # When that publisher publishes: it picks number 1 too, whose derived id is taken
    monkeypatch.setattr(ledger.catalogue, "plan", lambda tenant_id, code: stale)
    response = admin.post("/v1/plans/pro/versions", json={"prices": []})
    monkeypatch.undo()
    # Then it is a 409 (a version race, to retry), nothing is recorded, and version 1 is the first
    refused(response, 409)
    assert ledger.events_recorded() == before
    assert admin.get("/v1/plans/pro/versions").json() == {"data": [first], "has_more": False}
    # And a retry, reading the plan afresh, publishes version 2
    assert created(admin.post("/v1/plans/pro/versions", json={"prices": []}))["version"] == 2


def with_change(path: str, value: Any) -> dict[str, Any]:
    """EVERY_KIND with the value at a dotted path (`prices.3.tiers.1.up_to`) replaced."""
    body = copy.deepcopy(EVERY_KIND)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    target: Any = body
    for part in parents:
        target = target[part]
    target[last] = value
    return body


def only_price(price: dict[str, Any]) -> dict[str, Any]:
    return {"prices": [price]}


GRADUATED = EVERY_PRICE[3]
REFUSED_VERSIONS = {
    "tier bounds not rising": (
        only_price({**GRADUATED, "tiers": [{"up_to": "10", "unit_amount": "1"}, {"up_to": "10", "unit_amount": "1"},
                                           {"up_to": None, "unit_amount": "1"}]}),
        "prices[0].tiers[1].up_to"),
    "tier bounds falling": (
        only_price({**GRADUATED, "tiers": [{"up_to": "1", "unit_amount": "1"}, {"up_to": "0.5", "unit_amount": "1"},
                                           {"up_to": None, "unit_amount": "1"}]}),
        "prices[0].tiers[1].up_to"),
    "last tier bounded": (
        only_price({**GRADUATED, "type": "volume", "tiers": [{"up_to": "10", "unit_amount": "1"},
                                                            {"up_to": "20", "unit_amount": "1"}]}),
        "prices[0].tiers[1].up_to"),
    "an inner tier unbounded": (
        only_price({**GRADUATED, "tiers": [{"up_to": None, "unit_amount": "1"}, {"up_to": None, "unit_amount": "1"}]}),
        "prices[0].tiers[0].up_to"),
    "no tiers": (only_price({**GRADUATED, "tiers": []}), "prices[0].tiers"),
    "price currency not the plan's": (only_price({**EVERY_PRICE[0], "currency": "EUR"}), "prices[0].currency"),
    "pricing unit in another currency": (None, "prices[0].currency"),  # see the test: a EUR unit
    "both currency and pricing unit": (only_price({**EVERY_PRICE[6], "currency": "USD"}), "prices[0].currency"),
    "unknown meter": (only_price({**EVERY_PRICE[1], "meter_code": "no_such_meter"}), "prices[0].meter_code"),
    "metered price without a meter": (only_price({"type": "per_unit", "currency": "USD", "unit_amount": "1"}),
                                      "prices[0].meter_code"),
    "metered price in advance": (only_price({**EVERY_PRICE[1], "pay_in": "advance"}), "prices[0].pay_in"),
    "flat price with a meter": (only_price({**EVERY_PRICE[0], "meter_code": "api_calls"}), "prices[0].meter_code"),
    "unknown pricing unit": (only_price({**EVERY_PRICE[6], "pricing_unit": "gems"}), "prices[0].pricing_unit"),
    "percentage on a count meter": (only_price({**EVERY_PRICE[5], "meter_code": "api_calls"}),
                                    "prices[0].meter_code"),
    "package of nothing": (only_price({**EVERY_PRICE[2], "package_size": "0"}), "prices[0].package_size"),
    "negative unit amount": (only_price({**EVERY_PRICE[1], "unit_amount": "-0.01"}), "prices[0].unit_amount"),
    "percentage minimum above maximum": (only_price({**EVERY_PRICE[5], "min_per_transaction": "20.00"}),
                                         "prices[0].min_per_transaction"),
    "unknown price type": (only_price({**EVERY_PRICE[0], "type": "donation"}), "prices[0].type"),
    "entitlement for an unknown feature": (
        {"prices": [], "entitlements": [{"feature_code": "no_such_feature", "limit": "1"}]},
        "entitlements[0].feature_code"),
    "boolean feature given a limit": (
        {"prices": [], "entitlements": [{"feature_code": "sso", "limit": "10"}]}, "entitlements[0].enabled"),
    "metered feature switched on": (
        {"prices": [], "entitlements": [{"feature_code": "api", "enabled": True}]}, "entitlements[0].limit"),
    "config feature given a limit": (
        {"prices": [], "entitlements": [{"feature_code": "support_tier", "limit": "1"}]}, "entitlements[0].value"),
    "soft limit below the limit": (with_change("entitlements.0.soft_limit", "9999"), "entitlements[0].soft_limit"),
    "feature granted twice": (
        {"prices": [], "entitlements": [EVERY_ENTITLEMENT[1], EVERY_ENTITLEMENT[1]]}, "entitlements[1].feature_code"),
    "negative minimum commitment": (with_change("minimum_commitment", "-1.00"), "minimum_commitment"),
    "negative trial": (with_change("trial_days", -1), "trial_days"),
    "amount as a JSON number": (with_change("prices.0.amount", 49.0), "prices[0].amount"),
    "tier bound as a JSON number": (with_change("prices.3.tiers.0.up_to", 0.1), "prices[3].tiers[0].up_to"),
    "commitment as a JSON number": (with_change("minimum_commitment", 100), "minimum_commitment"),
    "limit as a JSON number": (with_change("entitlements.0.limit", 10000), "entitlements[0].limit"),
}


def test_a_version_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    # Given the Pro plan (USD) with its meters, features and credits, and a credit unit priced in EUR
    define_catalogue(admin)
    created(admin.post("/v1/pricing-units", json={**CREDITS, "code": "euro_credits", "currency": "EUR"}))
    cases = {**REFUSED_VERSIONS, "pricing unit in another currency": (
        only_price({**EVERY_PRICE[6], "pricing_unit": "euro_credits"}), "prices[0].currency")}
    before = ledger.events_recorded()
    for rule, (body, field) in cases.items():
        # When a version breaking one rule is published
        response = admin.post("/v1/plans/pro/versions", json=body)
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # And nothing was recorded: no version, and the plan still has none
    assert ledger.events_recorded() == before
    assert admin.get("/v1/plans/pro").json()["latest_version"] == 0
    assert admin.get("/v1/plans/pro/versions").json() == {"data": [], "has_more": False}


# --- Every kind -------------------------------------------------------------------------------

KINDS = {
    "/v1/meters": [METERS[0], METERS[1], METERS[3]],
    "/v1/features": [{"code": f"flag_{n}", "name": f"Flag {n}", "type": "boolean"} for n in range(3)],
    "/v1/pricing-units": [{**CREDITS, "code": f"unit_{n}"} for n in range(3)],
    "/v1/plans": [{**PRO, "code": f"plan_{n}"} for n in range(3)],
}


def test_a_code_already_taken_is_a_conflict_for_each_kind_and_records_nothing(admin, ledger):
    for path, bodies in KINDS.items():
        # Given an entry of this kind
        first = created(admin.post(path, json=bodies[0]))
        before = ledger.events_recorded()
        # When another is defined with the same code, even with different details
        response = admin.post(path, json={**bodies[0], "name": "Another"})
        # Then it is a 409, nothing is recorded, and the first is unchanged
        refused(response, 409)
        assert ledger.events_recorded() == before
        assert admin.get(f"{path}/{bodies[0]['code']}").json() == first


def test_each_kind_is_listed_in_creation_order_and_read_by_code(admin):
    for path, bodies in KINDS.items():
        # Given three entries of this kind
        entries = [created(admin.post(path, json=body)) for body in bodies]
        codes = [body["code"] for body in bodies]
        # When they are listed, all at once and a page at a time
        everything = admin.get(path).json()
        first = admin.get(path, params={"limit": 2}).json()
        rest = admin.get(path, params={"limit": 2, "starting_after": codes[1]}).json()
        # Then they come in creation order, with has_more telling whether more follow
        assert everything == {"data": entries, "has_more": False}
        assert [e["code"] for e in first["data"]] == codes[:2] and first["has_more"] is True
        assert [e["code"] for e in rest["data"]] == codes[2:] and rest["has_more"] is False
        # And each reads by its code; an unknown code is a 404
        for entry in entries:
            assert admin.get(f"{path}/{entry['code']}").json() == entry
        refused(admin.get(f"{path}/nothing_here"), 404)
        refused(admin.get(path, params={"starting_after": "nothing_here"}), 404)
        refused(admin.get(path, params={"limit": 101}), 422)


def test_another_tenants_catalogue_is_not_found(admin, ledger, base_url):
    # Given Pro, version 1, defined by one tenant
    define_catalogue(admin)
    created(admin.post("/v1/plans/pro/versions", json=EVERY_KIND))
    _, secret = open_tenant(ledger, "Globex")
    with client(base_url, secret) as other:
        # When another tenant reads or lists it
        # Then it does not exist for them, and they may use the same codes for their own
        assert other.get("/v1/plans/pro").status_code == 404
        assert other.get("/v1/plans/pro/versions/1").status_code == 404
        assert other.get("/v1/meters").json() == {"data": [], "has_more": False}
        assert "meter_code" in refused(other.post("/v1/features", json=FEATURES[0]))
        created(other.post("/v1/meters", json=METERS[0]))

