"""Worked invoice examples over HTTP, on both stores: every price type over a whole period, an upgrade
mid-period, a cancel (now and at the period's end), a trial, a leap-year February, a 31st anniversary
anchor, and the tax rounding. The billing clock runs through `ledger.close_periods(now)`; "now" for
amendments, cancels and the upcoming invoice is fixed through `ledger.subscriptions.clock`.

Every expected figure is worked out by hand in the comment beside it, in exact decimals: the unrounded
amount first, then each currency's half-up rounding (USD 2 places, JPY 0, KWD 3). Where amounts matter
the same price figures are used in each currency, so only the rounding differs between them."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from conftest import assert_problem, created

CURRENCIES = ["USD", "JPY", "KWD"]
ZERO = {"USD": "0.00", "JPY": "0", "KWD": "0.000"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.fixture
def billing(admin, ledger):
    """A tenant with a `tokens` meter (sum of tokens) and a `payments` meter (sum of amount)."""
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/meters", json={"code": "payments", "name": "Payments", "event_name": "payment",
                                           "aggregation": "sum", "field": "amount"}))
    return admin


def clock(ledger, when: str) -> None:
    ledger.subscriptions.clock = lambda: at(when)


def subscribe(admin, currency: str, versions: list[dict], start_at: str, anchor: str = "calendar",
              customer: str = "acme", tax_rate: str | None = None) -> tuple[dict, str]:
    """A monthly plan with these versions (each `{"prices": [...], ...}`, numbered 1, 2, ...), a customer
    in `currency` and its subscription on version 1; returns (the subscription, the plan code)."""
    code = f"plan-{customer}"
    created(admin.post("/v1/plans", json={"code": code, "name": code, "currency": currency, "interval": "month"}))
    for version in versions:
        created(admin.post(f"/v1/plans/{code}/versions", json=version))
    body = {"external_id": customer, "name": customer, "currency": currency}
    created(admin.post("/v1/customers", json=body if tax_rate is None else {**body, "tax_rate": tax_rate}))
    subscription = created(admin.post("/v1/subscriptions", json={
        "customer": customer, "plan_code": code, "plan_version": 1, "start_at": start_at, "billing_anchor": anchor}))
    return subscription, code


def flat(currency: str, amount: str, pay_in: str) -> dict:
    return {"type": "flat", "currency": currency, "amount": amount, "pay_in": pay_in}


def use(admin, customer: str, event_name: str, *readings: tuple[str, object], field: str = "tokens") -> None:
    """Usage events at the given times (UTC), each with `field` set to its value."""
    events = [{"event_id": f"{event_name}-{n}", "customer": customer, "event_name": event_name, "timestamp": when,
               "properties": {field: value}} for n, (when, value) in enumerate(readings)]
    answer = admin.post("/v1/events/batch", json={"events": events}).json()
    assert answer["accepted"] == len(readings), answer


def issued(admin, customer: str = "acme") -> dict[tuple[str, str], dict]:
    """The customer's issued invoices, by (kind, period_start)."""
    found = admin.get("/v1/invoices", params={"customer": customer, "limit": 100}).json()["data"]
    return {(summary["kind"], summary["period_start"]): summary for summary in found}


def invoice(admin, kind: str, period_start: str, customer: str = "acme") -> dict:
    """One issued invoice in full (GET /v1/invoices/{id})."""
    answer = admin.get(f"/v1/invoices/{issued(admin, customer)[kind, period_start]['id']}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def amounts(found: dict) -> list[str]:
    """The line amounts, as sent; and the subtotal is their sum."""
    assert sum((Decimal(line["amount"]) for line in found["lines"]), Decimal(0)) == Decimal(found["subtotal"])
    return [line["amount"] for line in found["lines"]]


def sums(found: dict) -> tuple[str, ...]:
    return tuple(found[name] for name in ("subtotal", "commitment_true_up", "tax", "total", "credits_applied",
                                          "amount_due"))


# --- Every price type over a whole period ---------------------------------------------------------------------

TIERS = [{"up_to": "10000", "unit_amount": "0.001", "flat_amount": "1.00"},
         {"up_to": None, "unit_amount": "0.0005", "flat_amount": "2.50"}]


def every_price_type(currency: str) -> list[dict]:
    return [
        flat(currency, "49.99", "advance"),
        flat(currency, "20", "arrears"),
        {"type": "per_unit", "meter_code": "tokens", "currency": currency, "unit_amount": "0.0015"},
        {"type": "package", "meter_code": "tokens", "currency": currency, "package_amount": "5.00",
         "package_size": "1000", "free_units": "2000"},
        {"type": "graduated", "meter_code": "tokens", "currency": currency, "tiers": TIERS},
        {"type": "volume", "meter_code": "tokens", "currency": currency, "tiers": TIERS},
        {"type": "percentage", "meter_code": "payments", "currency": currency, "rate": "2.9", "fixed_fee": "0.30",
         "free_units": "1"},
    ]


# January 2026 (31 days), 12,345 tokens and three payments (100.00, 250.00, 19.99), tax 8.25 %:
#   flat arrears  20                                                              = 20
#   per_unit      12,345 x 0.0015                                                 = 18.5175
#   package       ceil((12,345 - 2,000) / 1,000) = ceil(10.345) = 11 x 5.00      = 55
#   graduated     10,000 x 0.001 + 1.00 = 11.000; 2,345 x 0.0005 + 2.50 = 3.6725 = 14.6725
#   volume        12,345 lies in the last tier: 12,345 x 0.0005 + 2.50           = 8.6725
#   percentage    100.00 free (free_units 1); 250.00 x 2.9 % + 0.30 = 7.55;
#                 19.99 x 2.9 % + 0.30 = 0.57971 + 0.30 = 0.87971; 7.55 + 0.87971 = 8.42971
# each line rounded half-up, then subtotal, tax = subtotal x 0.0825 rounded once, total:
#   USD 20.00 + 18.52 + 55.00 + 14.67 + 8.67 + 8.43 = 125.29; x 0.0825 = 10.336425 -> 10.34; 135.63
#   JPY 20 + 19 (18.5175) + 55 + 15 (14.6725) + 9 (8.6725) + 8 (8.42971) = 126; x 0.0825 = 10.395 -> 10; 136
#   KWD 20.000 + 18.518 (tie .5175 -> up) + 55.000 + 14.673 (tie) + 8.673 (tie) + 8.430 = 125.294;
#       x 0.0825 = 10.336755 -> 10.337; 135.631
# the advance invoice: 49.99 for the whole period, and its own tax:
#   USD 49.99 x 0.0825 = 4.124175 -> 4.12, 54.11; JPY 50 x 0.0825 = 4.125 -> 4, 54;
#   KWD 49.990 x 0.0825 = 4.124175 -> 4.124, 54.114
EVERY_PRICE_TYPE = {
    "USD": (["20.00", "18.52", "55.00", "14.67", "8.67", "8.43"], ("125.29", "0.00", "10.34", "135.63"),
            ("49.99", "4.12", "54.11")),
    "JPY": (["20", "19", "55", "15", "9", "8"], ("126", "0", "10", "136"), ("50", "4", "54")),
    "KWD": (["20.000", "18.518", "55.000", "14.673", "8.673", "8.430"], ("125.294", "0.000", "10.337", "135.631"),
            ("49.990", "4.124", "54.114")),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_every_price_type_over_a_whole_period(billing, ledger, currency):
    # Given a plan with every price type, from Jan 1 2026, and the tenant's 8.25 % tax
    assert billing.patch("/v1/tenant", json={"default_tax_rate": "0.0825"}).status_code == 200
    subscribe(billing, currency, [{"prices": every_price_type(currency)}], "2026-01-01T00:00:00Z")
    # And January's usage: at its first instant (in), at its last second (in), at February's first
    # instant (the next period's: out) and before the subscription (out)
    use(billing, "acme", "llm", ("2026-01-01T00:00:00Z", 10000), ("2026-01-31T23:59:59Z", 2345),
        ("2026-02-01T00:00:00Z", 99999), ("2025-12-31T23:59:59Z", 77777))
    use(billing, "acme", "payment", ("2026-01-05T10:00:00Z", "100.00"), ("2026-01-06T10:00:00Z", "250.00"),
        ("2026-01-07T10:00:00Z", "19.99"), field="amount")
    # When the billing clock runs a day after January ends (the 24 h grace period is over)
    changed = ledger.close_periods(at("2026-02-02T00:00:00Z"))
    # Then January's advance and closing invoices and February's advance invoice are issued and final:
    # 3 drafted + 3 finalized
    assert changed == 6
    assert {key: summary["status"] for key, summary in issued(billing).items()} == {
        ("advance", "2026-01-01T00:00:00Z"): "finalized", ("closing", "2026-01-01T00:00:00Z"): "finalized",
        ("advance", "2026-02-01T00:00:00Z"): "finalized"}
    lines, closing_sums, advance = EVERY_PRICE_TYPE[currency]
    closing = invoice(billing, "closing", "2026-01-01T00:00:00Z")
    assert (closing["period_start"], closing["period_end"], closing["currency"]) == (
        "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", currency)
    assert amounts(closing) == lines
    assert sums(closing) == (*closing_sums, ZERO[currency], closing_sums[-1])
    assert closing["tax_rate"] == "0.0825"
    # And each line shows what it rated: the whole period of the arrears fee, 12,345 tokens (the events
    # at February's start and before the subscription are not on it), 3 transactions
    arrears, per_unit, package, graduated, volume, percentage = closing["lines"]
    assert (arrears["quantity"], arrears["unit_amount"]) == ("1.000000", "20")
    assert [Decimal(line["quantity"]) for line in (per_unit, package, graduated, volume)] == [Decimal(12345)] * 4
    assert (per_unit["unit_amount"], per_unit["meter_code"]) == ("0.0015", "tokens")
    assert (percentage["quantity"], percentage["meter_code"]) == ("3", "payments")
    # And the tier breakdowns are unrounded: 11.000 and 3.6725 (graduated), 8.6725 (volume)
    assert [(Decimal(t["units"]), Decimal(t["amount"])) for t in graduated["tiers"]] == [
        (Decimal(10000), Decimal(11)), (Decimal(2345), Decimal("3.6725"))]
    assert [(Decimal(t["units"]), Decimal(t["amount"])) for t in volume["tiers"]] == [
        (Decimal(12345), Decimal("8.6725"))]
    assert all(line["period_start"] == "2026-01-01T00:00:00Z" and line["period_end"] == "2026-02-01T00:00:00Z"
               for line in closing["lines"])
    # And the advance fee is billed whole, on January's advance invoice and again on February's (a
    # 28-day month costs the same whole fee as a 31-day one)
    fee, tax, total = advance
    for period_start in ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"):
        found = invoice(billing, "advance", period_start)
        assert amounts(found) == [fee]
        assert found["lines"][0]["quantity"] == "1.000000"
        assert sums(found) == (fee, ZERO[currency], tax, total, ZERO[currency], total)
    # And numbers were taken in the clock's order, without a gap
    numbers = {key: summary["number"] for key, summary in issued(billing).items()}
    assert numbers == {("advance", "2026-01-01T00:00:00Z"): "INV-000001",
                       ("closing", "2026-01-01T00:00:00Z"): "INV-000002",
                       ("advance", "2026-02-01T00:00:00Z"): "INV-000003"}


# --- An upgrade mid-period ------------------------------------------------------------------------------------

def graduated(currency: str, first: str, then: str) -> dict:
    return {"type": "graduated", "meter_code": "tokens", "currency": currency,
            "tiers": [{"up_to": "100", "unit_amount": first}, {"up_to": None, "unit_amount": then}]}


# April 2026 has 30 days = 720 h. The upgrade at Apr 20 08:00 leaves 10 d 16 h = 256 h of it.
#   v1 tokens [Apr 1, Apr 20 08:00): 150 = 100 x 0.10 + 50 x 0.05                       = 12.50
#   v2 tokens [Apr 20 08:00, May 1): 100 (at the change: v2's) + 50 = 150; the tiers start
#      afresh: 100 x 0.08 + 50 x 0.04 = 8.00 + 2.00 (not 150 x 0.04 = 6.00)             = 10.00
#   v1 unused fee: -30 x 256 / 720 = -10.666...;  v2 fee: 60 x 256 / 720 = 21.333...
#   USD 12.50 + 10.00 - 10.67 + 21.33 = 33.16
#   JPY 13 (12.5: a tie, half-up) + 10 - 11 + 21 = 33
#   KWD 12.500 + 10.000 - 10.667 + 21.333 = 33.166
UPGRADE = {
    "USD": (["12.50", "10.00", "-10.67", "21.33"], "33.16", "30.00", "60.00"),
    "JPY": (["13", "10", "-11", "21"], "33", "30", "60"),
    "KWD": (["12.500", "10.000", "-10.667", "21.333"], "33.166", "30.000", "60.000"),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_an_upgrade_mid_period_adjusts_the_advance_fee_and_rates_usage_per_segment(billing, ledger, currency):
    # Given v1 ($30 in advance, graduated tokens) and v2 ($60 in advance, cheaper tiers), on v1 from Apr 1
    subscription, code = subscribe(billing, currency, [
        {"prices": [flat(currency, "30", "advance"), graduated(currency, "0.10", "0.05")]},
        {"prices": [flat(currency, "60", "advance"), graduated(currency, "0.08", "0.04")]},
    ], "2026-04-01T00:00:00Z")
    ledger.close_periods(at("2026-04-01T00:00:00Z"))  # April's advance invoice: v1's fee
    # And tokens used before the change below, at its very instant and after it (sent now, in November)
    use(billing, "acme", "llm", ("2026-04-10T12:00:00Z", 150), ("2026-04-20T08:00:00Z", 100),
        ("2026-04-25T12:00:00Z", 50))
    # When it is upgraded to v2 now, on Apr 20 at 08:00
    clock(ledger, "2026-04-20T08:00:00Z")
    amended = billing.post(f"/v1/subscriptions/{subscription['id']}/amendments",
                           json={"reason": "upgrade", "changes": {"plan_version": 2}})
    assert amended.status_code == 200, amended.text
    upcoming = billing.get("/v1/customers/acme/upcoming-invoice").json()
    ledger.close_periods(at("2026-05-02T00:00:00Z"))
    # Then April's closing invoice rates each segment's usage on its own version's tiers, credits v1's
    # unused fee and charges v2's for the rest of April
    lines, subtotal, april_fee, may_fee = UPGRADE[currency]
    closing = invoice(billing, "closing", "2026-04-01T00:00:00Z")
    assert amounts(closing) == lines
    assert (closing["subtotal"], closing["tax"], closing["total"]) == (subtotal, ZERO[currency], subtotal)
    assert [(line["description"], line["period_start"], line["period_end"]) for line in closing["lines"]] == [
        (f"{code} v1: tokens (graduated)", "2026-04-01T00:00:00Z", "2026-04-20T08:00:00Z"),
        (f"{code} v2: tokens (graduated)", "2026-04-20T08:00:00Z", "2026-05-01T00:00:00Z"),
        (f"{code} v1: unused fee", "2026-04-20T08:00:00Z", "2026-05-01T00:00:00Z"),
        (f"{code} v2: fee", "2026-04-20T08:00:00Z", "2026-05-01T00:00:00Z")]
    # 256 / 720 = 0.3555... shown to 6 places; the usage per segment is 150 each
    assert [Decimal(line["quantity"]) for line in closing["lines"]] == [
        Decimal(150), Decimal(150), Decimal("-0.355556"), Decimal("0.355556")]
    assert [[(Decimal(t["units"]), Decimal(t["amount"])) for t in line["tiers"]] for line in closing["lines"][:2]] == [
        [(Decimal(100), Decimal(10)), (Decimal(50), Decimal("2.5"))],  # 100 x 0.10; 50 x 0.05
        [(Decimal(100), Decimal(8)), (Decimal(50), Decimal(2))]]  # 100 x 0.08; 50 x 0.04
    # And the upcoming invoice read at the change showed the same lines (the usage was all acknowledged)
    assert (amounts(upcoming), upcoming["status"], upcoming["id"]) == (lines, "upcoming", None)
    # And April's advance invoice billed v1's whole fee, May's v2's
    assert amounts(invoice(billing, "advance", "2026-04-01T00:00:00Z")) == [april_fee]
    assert amounts(invoice(billing, "advance", "2026-05-01T00:00:00Z")) == [may_fee]


# --- Cancel ---------------------------------------------------------------------------------------------------

def cancellable(currency: str) -> list[dict]:
    return [{"prices": [flat(currency, "30", "advance"), flat(currency, "15", "arrears"),
                        {"type": "per_unit", "meter_code": "tokens", "currency": currency, "unit_amount": "0.01"}]}]


# June 2026 has 30 days = 720 h; cancelled now on Jun 11 at 06:00: 246 h used, 474 h unused.
#   arrears fee  15 x 246 / 720 = 5.125          USD 5.13 (a tie: half-up)  JPY 5    KWD 5.125
#   tokens       3,000 x 0.01   = 30             USD 30.00                  JPY 30   KWD 30.000
#   unused fee  -30 x 474 / 720 = -19.75         USD -19.75                 JPY -20  KWD -19.750
#   subtotal                                     USD 15.38                  JPY 15   KWD 15.375
CANCEL_NOW = {
    "USD": (["5.13", "30.00", "-19.75"], "15.38", "30.00"),
    "JPY": (["5", "30", "-20"], "15", "30"),
    "KWD": (["5.125", "30.000", "-19.750"], "15.375", "30.000"),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_a_cancel_now_credits_the_unused_advance_fee_and_bills_up_to_the_cancel(billing, ledger, currency):
    # Given $30 in advance, $15 in arrears and $0.01 a token, from Jun 1
    subscription, code = subscribe(billing, currency, cancellable(currency), "2026-06-01T00:00:00Z")
    use(billing, "acme", "llm", ("2026-06-05T00:00:00Z", 3000), ("2026-06-11T06:00:00Z", 999),
        ("2026-06-20T00:00:00Z", 5000))
    # When it is cancelled now, on Jun 11 at 06:00
    clock(ledger, "2026-06-11T06:00:00Z")
    cancelled = billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "now"})
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["ends_at"]) == ("cancelled", "2026-06-11T06:00:00Z")
    changed = ledger.close_periods(at("2026-06-13T00:00:00Z"))
    # Then June's advance invoice (the whole fee) and June's closing invoice are issued and final, and
    # nothing after: 2 drafted + 2 finalized
    assert changed == 4
    assert sorted(issued(billing)) == [("advance", "2026-06-01T00:00:00Z"), ("closing", "2026-06-01T00:00:00Z")]
    lines, subtotal, fee = CANCEL_NOW[currency]
    assert amounts(invoice(billing, "advance", "2026-06-01T00:00:00Z")) == [fee]
    # And the closing invoice bills the arrears fee and the usage up to the cancel (the events at and
    # after it are not on it), and credits the advance fee's unused part
    closing = invoice(billing, "closing", "2026-06-01T00:00:00Z")
    assert amounts(closing) == lines
    assert (closing["subtotal"], closing["total"], closing["amount_due"]) == (subtotal, subtotal, subtotal)
    assert [(line["description"], line["period_start"], line["period_end"], line["quantity"])
            for line in closing["lines"]] == [
        (f"{code} v1: fee", "2026-06-01T00:00:00Z", "2026-06-11T06:00:00Z", "0.341667"),  # 246 / 720
        (f"{code} v1: tokens (per_unit)", "2026-06-01T00:00:00Z", "2026-06-11T06:00:00Z", "3000"),
        (f"{code} v1: unused fee", "2026-06-11T06:00:00Z", "2026-07-01T00:00:00Z", "-0.658333")]  # 474 / 720
    assert (closing["period_start"], closing["period_end"]) == ("2026-06-01T00:00:00Z", "2026-07-01T00:00:00Z")


def test_a_cancel_at_period_end_bills_the_whole_period_and_nothing_after(billing, ledger):
    # Given the same plan from Jun 1, and June's usage
    subscription, _ = subscribe(billing, "USD", cancellable("USD"), "2026-06-01T00:00:00Z")
    use(billing, "acme", "llm", ("2026-06-05T00:00:00Z", 3000), ("2026-06-11T06:00:00Z", 999),
        ("2026-06-30T23:59:59Z", 5000), ("2026-07-01T00:00:00Z", 7777))
    # When it is cancelled at the period's end, on Jun 11
    clock(ledger, "2026-06-11T06:00:00Z")
    cancelled = billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "period_end"})
    assert cancelled.json()["ends_at"] == "2026-07-01T00:00:00Z"
    # And the clock runs well into August
    ledger.close_periods(at("2026-08-15T00:00:00Z"))
    # Then June is billed in full and July not at all
    assert sorted(issued(billing)) == [("advance", "2026-06-01T00:00:00Z"), ("closing", "2026-06-01T00:00:00Z")]
    assert amounts(invoice(billing, "advance", "2026-06-01T00:00:00Z")) == ["30.00"]
    closing = invoice(billing, "closing", "2026-06-01T00:00:00Z")
    # 15.00 whole; (3,000 + 999 + 5,000) x 0.01 = 89.99 (Jul 1's event is not June's); no adjustment
    assert amounts(closing) == ["15.00", "89.99"]
    assert (closing["lines"][0]["quantity"], closing["total"]) == ("1.000000", "104.99")
    # And once it has ended there is no upcoming invoice
    clock(ledger, "2026-07-01T00:00:00Z")
    assert_problem(billing.get("/v1/customers/acme/upcoming-invoice"), 404)


# --- A trial --------------------------------------------------------------------------------------------------

# A 14-day trial from Mar 10 2026: billing starts Mar 24; the first (calendar) period is [Mar 24, Apr 1),
# 8 of March's 31 days.
#   advance fee 100 x 8 / 31 = 25.806451...     USD 25.81  JPY 26  KWD 25.806
#   tokens (1,000 + 234) x 0.01 = 12.34         USD 12.34  JPY 12  KWD 12.340
TRIAL = {
    "USD": ("25.81", "12.34", "100.00"),
    "JPY": ("26", "12", "100"),
    "KWD": ("25.806", "12.340", "100.000"),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_nothing_is_billed_during_a_trial_and_the_first_period_starts_after_it(billing, ledger, currency):
    # Given a plan version with a 14-day trial, $100 in advance and $0.01 a token, subscribed on Mar 10
    subscription, _ = subscribe(billing, currency, [{"trial_days": 14, "prices": [
        flat(currency, "100", "advance"),
        {"type": "per_unit", "meter_code": "tokens", "currency": currency, "unit_amount": "0.01"}]}],
        "2026-03-10T00:00:00Z")
    assert (subscription["trial_days"], subscription["billing_start"]) == (14, "2026-03-24T00:00:00Z")
    # And tokens used during the trial (up to its last second) and after it (from its end)
    use(billing, "acme", "llm", ("2026-03-15T00:00:00Z", 5000), ("2026-03-23T23:59:59Z", 4000),
        ("2026-03-24T00:00:00Z", 1000), ("2026-03-28T00:00:00Z", 234))
    # When the clock runs up to the trial's last second, nothing is issued
    assert ledger.close_periods(at("2026-03-23T23:59:59Z")) == 0
    assert issued(billing) == {}
    # And the upcoming invoice read during the trial is the first period's, from the billing start
    clock(ledger, "2026-03-15T00:00:00Z")
    upcoming = billing.get("/v1/customers/acme/upcoming-invoice").json()
    fee, tokens, whole = TRIAL[currency]
    assert (upcoming["period_start"], upcoming["period_end"], amounts(upcoming)) == (
        "2026-03-24T00:00:00Z", "2026-04-01T00:00:00Z", [tokens])
    # When the clock runs past the first period
    ledger.close_periods(at("2026-04-02T00:00:00Z"))
    # Then the first period runs from the billing start: its advance fee is prorated over March's 31
    # days, its closing invoice bills the usage from the billing start only
    assert sorted(issued(billing)) == [("advance", "2026-03-24T00:00:00Z"), ("advance", "2026-04-01T00:00:00Z"),
                                       ("closing", "2026-03-24T00:00:00Z")]
    advance = invoice(billing, "advance", "2026-03-24T00:00:00Z")
    assert (amounts(advance), advance["lines"][0]["quantity"]) == ([fee], "0.258065")  # 8 / 31
    assert (advance["period_start"], advance["period_end"]) == ("2026-03-24T00:00:00Z", "2026-04-01T00:00:00Z")
    closing = invoice(billing, "closing", "2026-03-24T00:00:00Z")
    assert (amounts(closing), Decimal(closing["lines"][0]["quantity"])) == ([tokens], Decimal(1234))
    assert closing["lines"][0]["period_start"] == "2026-03-24T00:00:00Z"
    # And April, the first whole period, bills the whole fee
    assert amounts(invoice(billing, "advance", "2026-04-01T00:00:00Z")) == [whole]


@pytest.mark.parametrize(("trial_days", "cancelled_on", "cancel_at", "ends_at"), [
    (14, "2026-03-15T00:00:00Z", "now", "2026-03-15T00:00:00Z"),  # during the trial: ends now
    (14, "2026-03-15T00:00:00Z", "period_end", "2026-03-24T00:00:00Z"),  # during the trial: ends with it
    (0, "2026-03-01T00:00:00Z", "now", "2026-03-10T00:00:00Z"),  # not started yet: ends at its start
    (0, "2026-03-01T00:00:00Z", "period_end", "2026-03-10T00:00:00Z"),  # idem
])
def test_a_subscription_cancelled_before_its_billing_start_is_never_billed(billing, ledger, trial_days, cancelled_on,
                                                                            cancel_at, ends_at):
    # Given a subscription from Mar 10 2026 at $100 in advance, with or without a 14-day trial
    subscription, _ = subscribe(billing, "USD", [{"trial_days": trial_days, "prices": [flat("USD", "100", "advance")]}],
                                "2026-03-10T00:00:00Z")
    # When it is cancelled before billing starts: during the trial, or before it has started
    # (docs/subscriptions.md: "During the trial `period_end` ends it with the trial (nothing billed); a
    # subscription that has not started yet ends at its start")
    clock(ledger, cancelled_on)
    cancelled = billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": cancel_at})
    assert cancelled.json()["ends_at"] == ends_at
    # And the clock runs for months
    changed = ledger.close_periods(at("2026-06-01T00:00:00Z"))
    # Then no invoice is issued: the subscription ended at or before its billing start, so no period of
    # it was ever billable (not an advance fee billed and then credited back on a second invoice)
    assert (changed, issued(billing)) == (0, {})


# --- A leap-year February -------------------------------------------------------------------------------------

# February 2028 has 29 days = 2,505,600 s. Started on Feb 10 at 12:34:56 (calendar anchor: the first
# period is [Feb 10 12:34:56, Mar 1), prorated over the whole of February), cancelled now on Feb 29 at 18:00.
#   advance fee: used from the start to Mar 1 = 19 d 11:25:04 = 1,641,600 + 39,600 + 1,500 + 4 = 1,682,704 s
#     100 x 1,682,704 / 2,505,600 = 67.157726...          USD 67.16  JPY 67  KWD 67.158  (quantity 0.671577)
#     (over a 28-day February, 2,419,200 s, it would be 69.557...: the 29th day counts)
#   arrears fee: from the start to Feb 29 18:00 = 19 d 05:25:04 = 1,641,600 + 18,000 + 1,500 + 4 = 1,661,104 s
#     58 x 1,661,104 / 2,505,600 = 38.451481...           USD 38.45  JPY 38  KWD 38.451  (quantity 0.662957)
#   unused advance fee: Feb 29 18:00 to Mar 1 = 6 h = 21,600 s
#     -100 x 21,600 / 2,505,600 = -0.862068...            USD -0.86  JPY -1  KWD -0.862  (quantity -0.008621)
#   closing subtotal                                      USD 37.59  JPY 37  KWD 37.589
LEAP = {
    "USD": ("67.16", ["38.45", "-0.86"], "37.59"),
    "JPY": ("67", ["38", "-1"], "37"),
    "KWD": ("67.158", ["38.451", "-0.862"], "37.589"),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_a_leap_year_february_prorates_by_the_second_over_29_days(billing, ledger, currency):
    # Given $100 in advance and $58 in arrears, a month, from Feb 10 2028 at 12:34:56
    subscription, code = subscribe(billing, currency, [{"prices": [
        flat(currency, "100", "advance"), flat(currency, "58", "arrears")]}], "2028-02-10T12:34:56Z")
    ledger.close_periods(at("2028-02-10T12:34:56Z"))
    # When it is cancelled now, on Feb 29 at 18:00
    clock(ledger, "2028-02-29T18:00:00Z")
    assert billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "now"}).status_code == 200
    ledger.close_periods(at("2028-03-02T00:00:00Z"))
    # Then the advance fee was prorated from the start over February's 29 days
    advance_fee, lines, subtotal = LEAP[currency]
    assert sorted(issued(billing)) == [("advance", "2028-02-10T12:34:56Z"), ("closing", "2028-02-10T12:34:56Z")]
    advance = invoice(billing, "advance", "2028-02-10T12:34:56Z")
    assert (amounts(advance), advance["lines"][0]["quantity"]) == ([advance_fee], "0.671577")
    assert (advance["period_start"], advance["period_end"]) == ("2028-02-10T12:34:56Z", "2028-03-01T00:00:00Z")
    # And the closing invoice bills the arrears fee up to Feb 29 18:00 and credits the last 6 hours
    closing = invoice(billing, "closing", "2028-02-10T12:34:56Z")
    assert amounts(closing) == lines
    assert (closing["subtotal"], closing["total"]) == (subtotal, subtotal)
    assert [(line["description"], line["period_start"], line["period_end"], line["quantity"])
            for line in closing["lines"]] == [
        (f"{code} v1: fee", "2028-02-10T12:34:56Z", "2028-02-29T18:00:00Z", "0.662957"),
        (f"{code} v1: unused fee", "2028-02-29T18:00:00Z", "2028-03-01T00:00:00Z", "-0.008621")]


# --- An anniversary anchor on the 31st ------------------------------------------------------------------------

def test_a_31st_anniversary_anchor_falls_on_february_29th_and_returns_to_the_31st(billing, ledger):
    # Given $100 in advance and $31 in arrears, a month, anchored on Jan 31 2028 at 10:00
    subscribe(billing, "USD", [{"prices": [flat("USD", "100", "advance"), flat("USD", "31", "arrears")]}],
              "2028-01-31T10:00:00Z", anchor="anniversary")
    # When the clock runs to May 1 at 10:00 (the end of the grace period of the period ending Apr 30 10:00)
    changed = ledger.close_periods(at("2028-05-01T10:00:00Z"))
    # Then the periods are Jan 31 -> Feb 29 -> Mar 31 -> Apr 30 -> May 31, all at 10:00: four advance
    # invoices and three closing ones, each drafted and finalized
    assert changed == 14
    found = {key: (summary["period_end"], summary["status"], summary["total"])
             for key, summary in issued(billing).items()}
    assert found == {
        ("advance", "2028-01-31T10:00:00Z"): ("2028-02-29T10:00:00Z", "finalized", "100.00"),
        ("closing", "2028-01-31T10:00:00Z"): ("2028-02-29T10:00:00Z", "finalized", "31.00"),
        ("advance", "2028-02-29T10:00:00Z"): ("2028-03-31T10:00:00Z", "finalized", "100.00"),
        ("closing", "2028-02-29T10:00:00Z"): ("2028-03-31T10:00:00Z", "finalized", "31.00"),
        ("advance", "2028-03-31T10:00:00Z"): ("2028-04-30T10:00:00Z", "finalized", "100.00"),
        ("closing", "2028-03-31T10:00:00Z"): ("2028-04-30T10:00:00Z", "finalized", "31.00"),
        ("advance", "2028-04-30T10:00:00Z"): ("2028-05-31T10:00:00Z", "finalized", "100.00"),
    }
    # And each invoice's lines cover its own period: the whole fee over 29, 31 and 30 days alike
    for start, end in [("2028-01-31T10:00:00Z", "2028-02-29T10:00:00Z"),
                       ("2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z"),
                       ("2028-03-31T10:00:00Z", "2028-04-30T10:00:00Z")]:
        for kind, fee in (("advance", "100.00"), ("closing", "31.00")):
            read = invoice(billing, kind, start)
            assert (read["period_start"], read["period_end"]) == (start, end)
            assert [(line["period_start"], line["period_end"], line["quantity"], line["amount"])
                    for line in read["lines"]] == [(start, end, "1.000000", fee)]
    # And the upcoming invoice switches period at the anchor instant, not a second earlier
    clock(ledger, "2028-02-29T09:59:59Z")
    assert billing.get("/v1/customers/acme/upcoming-invoice").json()["period_start"] == "2028-01-31T10:00:00Z"
    clock(ledger, "2028-02-29T10:00:00Z")
    upcoming = billing.get("/v1/customers/acme/upcoming-invoice").json()
    assert (upcoming["period_start"], upcoming["period_end"]) == ("2028-02-29T10:00:00Z", "2028-03-31T10:00:00Z")


# The period [Feb 29 10:00, Mar 31 10:00) has 31 days; cancelled now on Mar 15 at 10:00: 15 days used, 16 left.
#   arrears fee   124 x 15 / 31 = 60               USD 60.00   JPY 60   KWD 60.000
#   unused fee   -100 x 16 / 31 = -51.612903...    USD -51.61  JPY -52  KWD -51.613
#   subtotal                                       USD 8.39    JPY 8    KWD 8.387
# (over a 30-day month it would have been 124 x 15 / 30 = 62 and -100 x 16 / 30 = -53.33...)
# The first period [Jan 31 10:00, Feb 29 10:00) is 29 days long and whole: 100 and 124.
ANNIVERSARY_CANCEL = {
    "USD": (["60.00", "-51.61"], "8.39", "100.00", "124.00"),
    "JPY": (["60", "-52"], "8", "100", "124"),
    "KWD": (["60.000", "-51.613"], "8.387", "100.000", "124.000"),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_a_cancel_in_a_31st_anniversary_period_prorates_over_that_period_s_length(billing, ledger, currency):
    # Given $100 in advance and $124 in arrears, a month, anchored on Jan 31 2028 at 10:00
    subscription, _ = subscribe(billing, currency, [{"prices": [
        flat(currency, "100", "advance"), flat(currency, "124", "arrears")]}], "2028-01-31T10:00:00Z",
        anchor="anniversary")
    ledger.close_periods(at("2028-03-01T10:00:00Z"))
    # When it is cancelled now, on Mar 15 at 10:00
    clock(ledger, "2028-03-15T10:00:00Z")
    assert billing.post(f"/v1/subscriptions/{subscription['id']}/cancel", json={"at": "now"}).status_code == 200
    ledger.close_periods(at("2028-04-01T00:00:00Z"))
    # Then the first period was billed whole, the second up to the cancel, and nothing after
    lines, subtotal, fee, arrears = ANNIVERSARY_CANCEL[currency]
    assert sorted(issued(billing)) == [("advance", "2028-01-31T10:00:00Z"), ("advance", "2028-02-29T10:00:00Z"),
                                       ("closing", "2028-01-31T10:00:00Z"), ("closing", "2028-02-29T10:00:00Z")]
    assert amounts(invoice(billing, "advance", "2028-01-31T10:00:00Z")) == [fee]
    assert amounts(invoice(billing, "closing", "2028-01-31T10:00:00Z")) == [arrears]
    assert amounts(invoice(billing, "advance", "2028-02-29T10:00:00Z")) == [fee]
    closing = invoice(billing, "closing", "2028-02-29T10:00:00Z")
    assert amounts(closing) == lines
    assert (closing["subtotal"], closing["total"]) == (subtotal, subtotal)
    assert [(line["period_start"], line["period_end"], line["quantity"]) for line in closing["lines"]] == [
        ("2028-02-29T10:00:00Z", "2028-03-15T10:00:00Z", "0.483871"),  # 15 / 31
        ("2028-03-15T10:00:00Z", "2028-03-31T10:00:00Z", "-0.516129")]  # -16 / 31


# --- Tax ------------------------------------------------------------------------------------------------------

# January 2026, whole: a 10.04 arrears fee, 1,004 tokens at 0.01 = 10.04, a minimum commitment of 100.04;
# the customer's own rate (the tenant's 20 % default is not used).
#   USD rate 12.5 %: lines 10.04 + 10.04 = 20.08; true-up 100.04 - 20.08 = 79.96;
#       tax (20.08 + 79.96) x 0.125 = 12.505 -> 12.51 half-up (half-even would give 12.50; per line
#       1.255 -> 1.26, 1.26, 79.96 x 0.125 = 9.995 -> 10.00: 12.52; on the subtotal alone 2.51); total 112.55
#   JPY rate 12.5 %: lines 10 + 10 = 20 (10.04 -> 10); minimum 100.04 -> 100, true-up 80;
#       tax 100 x 0.125 = 12.5 -> 13 (half-even 12; per line 1.25 -> 1, 1, 80 x 0.125 = 10: 12;
#       on the subtotal alone 2.5 -> 3); total 113
#   KWD rate 6.25 %: lines 10.040 + 10.040 = 20.080; true-up 79.960;
#       tax 100.040 x 0.0625 = 6.2525 -> 6.253 (half-even 6.252; per line 0.6275 -> 0.628, 0.628,
#       79.960 x 0.0625 = 4.9975 -> 4.998: 6.254; on the subtotal alone 1.255); total 106.293
TAX = {
    "USD": ("0.125", ["10.04", "10.04"], ("20.08", "79.96", "12.51", "112.55")),
    "JPY": ("0.125", ["10", "10"], ("20", "80", "13", "113")),
    "KWD": ("0.0625", ["10.040", "10.040"], ("20.080", "79.960", "6.253", "106.293")),
}


@pytest.mark.parametrize("currency", CURRENCIES)
def test_tax_is_rounded_half_up_once_on_the_subtotal_and_the_true_up(billing, ledger, currency):
    # Given a tenant default of 20 %, and a customer with its own rate
    rate, lines, expected = TAX[currency]
    assert billing.patch("/v1/tenant", json={"default_tax_rate": "0.2"}).status_code == 200
    subscribe(billing, currency, [{"minimum_commitment": "100.04", "prices": [
        flat(currency, "10.04", "arrears"),
        {"type": "per_unit", "meter_code": "tokens", "currency": currency, "unit_amount": "0.01"}]}],
        "2026-01-01T00:00:00Z", tax_rate=rate)
    use(billing, "acme", "llm", ("2026-01-15T00:00:00Z", 1004))
    # When January is closed
    ledger.close_periods(at("2026-02-02T00:00:00Z"))
    # Then the tax is the customer's rate on subtotal + true-up, rounded half-up once
    closing = invoice(billing, "closing", "2026-01-01T00:00:00Z")
    assert amounts(closing) == lines
    assert closing["tax_rate"] == rate
    assert sums(closing) == (*expected, ZERO[currency], expected[-1])
    assert closing["status"] == "finalized" and closing["number"]
