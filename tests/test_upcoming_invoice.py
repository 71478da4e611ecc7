"""The upcoming invoice over HTTP, on both stores: API.md's pricing semantics on real invoice lines,
proration, plan changes, cancellation, tax and the sums' order. The clock is stopped at NOW."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from conftest import assert_problem, created

from projections import usage_readings

NOW = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)  # November has 30 days: 10 of them are left
TIERS = [{"up_to": "10", "unit_amount": "1.00", "flat_amount": "5.00"},
         {"up_to": "20.5", "unit_amount": "0.50"}, {"up_to": None, "unit_amount": "0.10", "flat_amount": "2.00"}]


@pytest.fixture
def billing(admin, ledger):
    ledger.subscriptions.clock = lambda: NOW
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/meters", json={"code": "payments", "name": "Payments", "event_name": "payment",
                                           "aggregation": "sum", "field": "amount"}))
    return admin


def subscribe(admin, prices, currency="USD", customer="acme", start_at="2026-11-01T00:00:00Z", **version):
    """A plan of these prices, a customer, and a monthly calendar subscription; returns the upcoming URL."""
    code = f"p{abs(hash(str(prices))) % 10**8}"
    created(admin.post("/v1/plans", json={"code": code, "name": code, "currency": currency, "interval": "month"}))
    created(admin.post(f"/v1/plans/{code}/versions", json={"prices": prices, **version}))
    created(admin.post("/v1/customers", json={"external_id": customer, "name": customer, "currency": currency}))
    subscription = created(admin.post("/v1/subscriptions", json={
        "customer": customer, "plan_code": code, "start_at": start_at, "billing_anchor": "calendar"}))
    return f"/v1/customers/{customer}/upcoming-invoice", subscription, code


def use(admin, customer, event_name, *values, field="tokens"):
    events = [{"event_id": f"{event_name}-{n}-{value}", "customer": customer, "event_name": event_name,
               "timestamp": f"2026-11-{10 + n % 10:02d}T12:00:00Z", "properties": {field: value}}
              for n, value in enumerate(values)]
    assert admin.post("/v1/events/batch", json={"events": events}).json()["accepted"] == len(values)


def amounts(invoice):
    assert sum(Decimal(line["amount"]) for line in invoice["lines"]) == Decimal(invoice["subtotal"])
    return [line["amount"] for line in invoice["lines"]]


def test_graduated_and_volume_on_the_same_tiers_with_inclusive_decimal_bounds(billing):
    # Given 20.5 tokens (the second tier's inclusive bound), on graduated and on volume tiers
    url, _, _ = subscribe(billing, [
        {"type": "graduated", "meter_code": "tokens", "currency": "USD", "tiers": TIERS},
        {"type": "volume", "meter_code": "tokens", "currency": "USD", "tiers": TIERS}])
    use(billing, "acme", "llm", "20", "0.5")
    invoice = billing.get(url).json()
    # Then graduated: 10 x 1 + 5 + 10.5 x 0.50 = 20.25; volume: 20.5 x 0.50 = 10.25 (the reached tier only)
    assert amounts(invoice) == ["20.25", "10.25"]
    graduated = invoice["lines"][0]
    assert (graduated["quantity"], graduated["period_start"], graduated["period_end"]) == (
        "20.5", "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    assert [(t["units"], t["amount"]) for t in graduated["tiers"]] == [("10", "15.00"), ("10.5", "5.250")]
    assert (invoice["status"], invoice["currency"], invoice["period_start"]) == ("upcoming", "USD",
                                                                               "2026-11-01T00:00:00Z")


def test_zero_usage_lies_in_the_first_tier_and_pays_its_flat_amount(billing):
    url, _, _ = subscribe(billing, [
        {"type": "graduated", "meter_code": "tokens", "currency": "USD", "tiers": TIERS},
        {"type": "volume", "meter_code": "tokens", "currency": "USD", "tiers": TIERS}])
    assert amounts(billing.get(url).json()) == ["5.00", "5.00"]


def test_package_with_free_units_and_a_sub_cent_unit_price_rounded_half_up(billing):
    # Given 1,000 units free then $5 per started 250, and $0.000002 a token
    url, _, _ = subscribe(billing, [
        {"type": "package", "meter_code": "tokens", "currency": "USD", "package_amount": "5.00",
         "package_size": "250", "free_units": "1000"},
        {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "0.000002"}])
    # When 1,251 + 1,250 = 2,501 tokens are used
    use(billing, "acme", "llm", 1251, 1250)
    invoice = billing.get(url).json()
    # Then 1,501 billable units are 7 packages ($35), and 2,501 x 0.000002 = 0.005002 rounds up to 0.01
    assert amounts(invoice) == ["35.00", "0.01"]
    assert invoice["lines"][1]["unit_amount"] == "0.000002"


def test_a_half_cent_tie_rounds_up_and_a_yen_line_has_no_decimals(billing):
    url, _, _ = subscribe(billing, [{"type": "per_unit", "meter_code": "tokens", "currency": "USD",
                                     "unit_amount": "0.005"}])
    use(billing, "acme", "llm", 1)
    assert amounts(billing.get(url).json()) == ["0.01"]  # 0.005 is a tie: half-up
    yen, _, _ = subscribe(billing, [{"type": "per_unit", "meter_code": "tokens", "currency": "JPY",
                                     "unit_amount": "0.5"}], currency="JPY", customer="tokyo")
    use(billing, "tokyo", "llm", 3)
    invoice = billing.get(yen).json()
    assert amounts(invoice) == ["2"] and invoice["total"] == "2"  # 1.5 yen rounds half-up to 2


def test_percentage_with_allowance_fixed_fee_and_clamps_in_kuwaiti_dinar(billing):
    # Given 2.9 % + 0.030 KWD a payment, the first payment free, each clamped to [0.100, 1.000]
    url, _, _ = subscribe(billing, [{
        "type": "percentage", "meter_code": "payments", "currency": "KWD", "rate": "2.9", "fixed_fee": "0.030",
        "min_per_transaction": "0.100", "max_per_transaction": "1.000", "free_units": "1"}],
        currency="KWD", customer="kuwait")
    # When payments of 500, 1, 100 and 10 KWD arrive (in that event-time order)
    use(billing, "kuwait", "payment", "500", "1", "100", "10", field="amount")
    invoice = billing.get(url).json()
    # Then 500 is free; 1 -> 0.059 clamped to 0.100; 100 -> 2.930 clamped to 1.000; 10 -> 0.320: 1.420
    assert amounts(invoice) == ["1.420"]
    assert invoice["lines"][0]["quantity"] == "4"


def test_fees_in_advance_and_in_arrears_are_prorated_by_the_second_on_a_mid_month_start(billing):
    # Given a subscription starting on Nov 21 (10 of November's 30 days left)
    url, _, _ = subscribe(billing, [
        {"type": "flat", "currency": "USD", "amount": "30.00", "pay_in": "arrears"},
        {"type": "flat", "currency": "USD", "amount": "90.00", "pay_in": "advance"}], start_at="2026-11-21T00:00:00Z")
    invoice = billing.get(url).json()
    # Then the closing invoice has the arrears fee for a third of the month; the advance fee was the
    # advance invoice's, and nothing changed since
    assert amounts(invoice) == ["10.00"]
    assert (invoice["lines"][0]["quantity"], invoice["period_start"]) == ("0.333333", "2026-11-21T00:00:00Z")


def test_an_upgrade_mid_period_credits_the_unused_advance_fee_and_charges_the_new_one(billing):
    # Given $30 in advance on v1, then v2 at $60
    url, subscription, code = subscribe(billing, [{"type": "flat", "currency": "USD", "amount": "30.00",
                                                   "pay_in": "advance"}])
    created(billing.post(f"/v1/plans/{code}/versions", json={
        "prices": [{"type": "flat", "currency": "USD", "amount": "60.00", "pay_in": "advance"}]}))
    # When it is upgraded now (Nov 21: a third of the month left)
    amended = billing.post(f"/v1/subscriptions/{subscription['id']}/amendments",
                           json={"reason": "upgrade", "changes": {"plan_version": 2}})
    assert amended.status_code == 200, amended.text
    invoice = billing.get(url).json()
    # Then v1's unused third is credited and v2's third charged
    assert amounts(invoice) == ["-10.00", "20.00"]
    assert [line["description"].split(":")[0] for line in invoice["lines"]] == [f"{code} v1", f"{code} v2"]
    assert invoice["total"] == "10.00"


def test_a_cancellation_now_credits_the_unused_advance_fee(billing, ledger):
    url, subscription, _ = subscribe(billing, [{"type": "flat", "currency": "USD", "amount": "30.00",
                                                "pay_in": "advance"}])
    assert billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "now"}).status_code == 200
    assert amounts(billing.get(f"{url}?subscription={subscription['id']}").json()) == ["-10.00"]


def test_tax_is_the_customer_s_rate_else_the_tenant_s_rounded_once_after_the_true_up(billing):
    # Given the tenant's 20 % default, a $100 minimum commitment and usage worth $33.33
    assert billing.patch("/v1/tenant", json={"default_tax_rate": "0.2"}).status_code == 200
    url, _, _ = subscribe(billing, [{"type": "per_unit", "meter_code": "tokens", "currency": "USD",
                                     "unit_amount": "0.01"}], minimum_commitment="100.00")
    use(billing, "acme", "llm", 3333)
    invoice = billing.get(url).json()
    # Then the true-up brings it to the minimum, and tax is 20 % of that
    assert (invoice["subtotal"], invoice["commitment_true_up"], invoice["tax_rate"], invoice["tax"]) == (
        "33.33", "66.67", "0.2", "20.00")
    assert (invoice["total"], invoice["credits_applied"], invoice["amount_due"]) == ("120.00", "0.00", "120.00")
    # And the customer's own rate wins: 8.25 % of 100.00 = 8.25
    assert billing.patch("/v1/customers/acme", json={"tax_rate": "0.0825"}).status_code == 200
    assert billing.get(url).json()["tax"] == "8.25"


def test_usage_shows_on_the_upcoming_invoice_as_soon_as_it_is_acknowledged(billing):
    url, _, _ = subscribe(billing, [{"type": "per_unit", "meter_code": "tokens", "currency": "USD",
                                     "unit_amount": "1"}])
    for n in range(1, 4):
        use(billing, "acme", "llm", n * 10 + n)  # a distinct event each time
        assert amounts(billing.get(url).json()) == [f"{sum(k * 11 for k in range(1, n + 1))}.00"]


def test_the_upcoming_invoice_counts_new_usage_without_reading_the_period_s_events_again(billing, monkeypatch):
    """The live draft takes its quantities from the counters that follow the log (a customer with a
    million events in its period: 3.6-4.0 s a read before, 1 ms once counted); an issued invoice is
    still computed from its events, and says the same."""
    url, _, _ = subscribe(billing, [
        {"type": "graduated", "meter_code": "tokens", "currency": "USD", "tiers": TIERS},
        {"type": "percentage", "meter_code": "payments", "currency": "USD", "rate": "0.02"}])
    use(billing, "acme", "llm", "20", "0.5")
    use(billing, "acme", "payment", "100", field="amount")
    first = billing.get(url).json()  # the counters begin here
    reads = []  # the event names of each read of the usage read model
    for name in ("fresh", "fresh_many"):
        original = getattr(usage_readings, name)
        monkeypatch.setattr(usage_readings, name,
                            lambda *a, _original=original, **k: reads.append(tuple(a[4])) or _original(*a, **k))
    use(billing, "acme", "llm", "4.5")
    again = billing.get(url).json()
    assert amounts(first)[0] == "20.25" and amounts(again)[0] == "22.70"  # 20.25 + 4.5 x 0.10 + 2.00 (tier 3)
    assert set(reads) == {("payment",)}  # only the percentage price's events are read
    monkeypatch.undo()
    assert billing.get(url).json() == again


def test_no_running_subscription_is_a_404(billing):
    created(billing.post("/v1/customers", json={"external_id": "idle", "name": "Idle", "currency": "USD"}))
    assert_problem(billing.get("/v1/customers/idle/upcoming-invoice"), 404)
    assert_problem(billing.get("/v1/customers/ghost/upcoming-invoice"), 404)
    assert_problem(billing.get("/v1/customers/idle/upcoming-invoice?subscription=sub_nope"), 404)
