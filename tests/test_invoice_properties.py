"""Invoice invariants on the pure functions of domain/invoice.py (`segments`, `closing_lines`,
`advance_lines`, `sums`), on generated contracts, prices and usage, with floats trapped.

The contracts are real billing periods (`domain.periods.period_at`, every interval and anchor, short
calendar first periods included), a start before the billing start (a trial), amendments at random
instants (to the microsecond, several at one instant allowed, as the domain allows) and an optional
end. Usage is plain data: events per meter, read through two plain functions. Expected figures are
computed here with `fractions.Fraction` (exact) and a half-up rounding of our own, never with
`domain.money.round_money` or `domain.periods.prorate`."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.invoice import (
    InvoiceLine,
    Segment,
    Sums,
    Usage,
    advance_lines,
    closing_lines,
    segments,
    sums,
)
from domain.money import MINOR_UNITS, trap_floats
from domain.periods import Period, period_at
from domain.plan_version import PlanVersionSpec
from domain.price import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Price,
    Tier,
    VolumePrice,
)
from domain.pricing import Transaction, rate, rate_transactions

trap_floats()

PROPERTY = settings(max_examples=100, deadline=None)
CURRENCIES = ["USD", "JPY", "KWD"]  # 2, 0 and 3 minor-unit places
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
VERSIONS = range(1, 5)
CREDITS = "credits"  # a pricing unit; its conversion rate is drawn per example


# --- exact reference arithmetic --------------------------------------------------------------------------------

def places(currency: str) -> int:
    return MINOR_UNITS[currency]


def minor(currency: str) -> Fraction:
    return Fraction(1, 10 ** places(currency))


def half_up(value: Fraction, currency: str) -> Decimal:
    """`value` rounded half-up (ties away from zero) to the currency's minor unit, from exact integers."""
    scaled = value * 10 ** places(currency)
    units = (abs(scaled) + Fraction(1, 2)).__floor__()
    return Decimal(units if scaled >= 0 else -units).scaleb(-places(currency))


def microseconds(start: datetime, end: datetime) -> int:
    return (end - start) // US


def share(amount: Decimal, period: Period, start: datetime, end: datetime) -> Fraction:
    """`amount` for the whole period, for [start, end) of it: exactly amount x used / the period's length."""
    return Fraction(amount) * microseconds(start, end) / period.microseconds


def in_force(versions: list[tuple[datetime, int]], moment: datetime) -> int:
    """The version whose effective instant is the last at or before `moment`."""
    return [number for since, number in versions if since <= moment][-1]


# --- generated contracts ---------------------------------------------------------------------------------------

def instants(low: datetime, high: datetime) -> st.SearchStrategy[datetime]:
    """Instants in [low, high]: whole seconds mostly, any microsecond sometimes."""
    span = microseconds(low, high)
    return st.one_of(st.integers(0, span // 1_000_000).map(lambda s: low + timedelta(seconds=s)),
                     st.integers(0, span).map(lambda us: low + timedelta(microseconds=us)))


class Contract(NamedTuple):
    period: Period
    billing_start: datetime
    versions: list[tuple[datetime, int]]  # (effective at, plan version), in order; the first at the start
    ends_at: datetime | None

    @property
    def low(self) -> datetime:
        return max(self.period.start, self.billing_start)

    @property
    def high(self) -> datetime:
        return self.period.end if self.ends_at is None else min(self.period.end, self.ends_at)


@st.composite
def contracts(draw: st.DrawFn, billable: bool = True) -> Contract:
    """A period of a subscription and its contract. `billable`: the period is one the clock bills (the
    subscription had not ended by the period's start, nor by its billing start)."""
    interval = draw(st.sampled_from(["day", "week", "month", "quarter", "year"]))
    anchor = draw(st.sampled_from(["calendar", "anniversary"]))
    billing_start = draw(instants(EPOCH, EPOCH + timedelta(days=5 * 366)))
    moment = draw(instants(billing_start, billing_start + timedelta(days=800)))
    period = period_at(billing_start, interval, anchor, moment)
    start_at = billing_start - timedelta(days=draw(st.integers(0, 30)))  # the trial
    versions = [(start_at, draw(st.sampled_from(VERSIONS)))]
    if draw(st.booleans()):  # as often as not, one version and no end: a plain period
        return Contract(period, billing_start, versions, None)
    later = period.end + timedelta(days=3)
    moments = sorted(draw(st.lists(instants(period.start, period.end), min_size=1, max_size=4))  # mostly inside
                     + draw(st.lists(instants(start_at, later), max_size=2)))  # and anywhere
    for moment in moments:  # an amendment is never to the version in force already
        versions.append((moment, draw(st.sampled_from([n for n in VERSIONS if n != versions[-1][1]]))))
    low = max(period.start, billing_start)
    ends_at = draw(st.none() | instants(low + US, later) if billable else st.none() | instants(start_at, later))
    return Contract(period, billing_start, versions, ends_at)


def decimals(low: str, high: str, places_: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(min_value=Decimal(low), max_value=Decimal(high), places=places_, allow_nan=False,
                       allow_infinity=False)


def money(high: str = "10000", currency: str | None = None) -> st.SearchStrategy[Decimal]:
    """Amounts with 0 to 4 places; with a currency, often an odd number of half minor units (a tie
    for a whole period's line)."""
    found = st.integers(0, 4).flatmap(lambda p: decimals("0", high, p))
    if currency is None:
        return found
    ties = st.integers(0, int(high) * 10 ** places(currency)).map(
        lambda k: Decimal((2 * k + 1) * 5).scaleb(-places(currency) - 1))  # (2k + 1) half minor units
    return st.booleans().flatmap(lambda tie: ties if tie else found)


TIE_PRONE_RATES = [Decimal("0.5"), Decimal("0.25"), Decimal("0.125"), Decimal("0.0625")]  # ties on many subtotals
TAX_RATES = st.booleans().flatmap(lambda tie: st.sampled_from(TIE_PRONE_RATES) if tie else decimals("0", "0.3", 4))


@st.composite
def tiers(draw: st.DrawFn) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.lists(decimals("0.001", "5000", 3), unique=True, max_size=3)))
    return tuple(Tier(up_to=up_to, unit_amount=draw(decimals("0", "10", 6)), flat_amount=draw(decimals("0", "50", 2)))
                 for up_to in [*bounds, None])


def prices(currency: str) -> st.SearchStrategy[Price]:
    """Any price type, in the invoice currency or (sometimes) in credits."""
    unit = st.sampled_from([{"currency": currency}, {"currency": currency}, {"pricing_unit": CREDITS}])
    tokens = {"meter_code": "tokens"}
    return st.one_of(
        st.builds(lambda u, a, pay_in: FlatPrice(**u, amount=a, pay_in=pay_in), unit, money(currency=currency),
                  st.sampled_from(["advance", "arrears"])),
        st.builds(lambda u, a: PerUnitPrice(**tokens, **u, unit_amount=a), unit,
                  st.booleans().flatmap(lambda half: st.just(Decimal(5).scaleb(-places(currency) - 1)) if half
                                        else decimals("0", "10", 6))),  # half a minor unit: ties on odd quantities
        st.builds(lambda u, a, size, free: PackagePrice(**tokens, **u, package_amount=a, package_size=size,
                                                        free_units=free),
                  unit, decimals("0", "100", 2), decimals("0.001", "1000", 3), decimals("0", "1000", 3)),
        st.builds(lambda u, t: GraduatedPrice(**tokens, **u, tiers=t), unit, tiers()),
        st.builds(lambda u, t: VolumePrice(**tokens, **u, tiers=t), unit, tiers()),
        st.builds(lambda u, r, fee, free_units, free_amount: PercentagePrice(
            meter_code="payments", **u, rate=r, fixed_fee=fee, free_units=free_units, free_amount=free_amount),
            unit, decimals("0", "10", 3), decimals("0", "1", 2), st.sampled_from([Decimal(0), Decimal(2)]),
            decimals("0", "500", 2)),
    )


def specs(price: st.SearchStrategy[Price], commitment: st.SearchStrategy[Decimal | None]
          ) -> st.SearchStrategy[dict[int, PlanVersionSpec]]:
    spec = st.builds(lambda p, m: PlanVersionSpec(prices=tuple(p), minimum_commitment=m),
                     st.lists(price, min_size=1, max_size=4), commitment)
    return st.fixed_dictionaries({number: spec for number in VERSIONS})


@st.composite
def usages(draw: st.DrawFn, period: Period) -> tuple[Usage, dict[str, list[tuple[datetime, Decimal]]]]:
    """Usage events around the period (some before or after it), and the Usage that reads them."""
    around = instants(period.start - timedelta(days=1), period.end + timedelta(days=1))
    tokens = st.integers(0, 3000).map(Decimal) if draw(st.booleans()) else decimals("0", "3000", 3)  # whole: ties
    events = {"tokens": draw(st.lists(st.tuples(around, tokens), max_size=12)),
              "payments": draw(st.lists(st.tuples(around, decimals("0", "400", 2)), max_size=8))}

    def quantity(meter: str, start: datetime, end: datetime) -> Decimal:
        return sum((value for when, value in events[meter] if start <= when < end), Decimal(0))

    def transactions(meter: str, start: datetime, end: datetime) -> list[Transaction]:
        return [Transaction(f"e{n}", when, value) for n, (when, value) in enumerate(events[meter])
                if start <= when < end]

    return Usage(quantity, transactions), events


def billed_in_advance(contract: Contract, spec_of: dict[int, PlanVersionSpec]) -> Segment:
    """What the period's advance invoice billed: the version in force at the period's (billing) start,
    to the period's end (as the ledger computes it)."""
    first = in_force(contract.versions, contract.low)
    return Segment(contract.low, contract.period.end, first, spec_of[first])


# --- segments ---------------------------------------------------------------------------------------------------

@PROPERTY
@given(contracts(billable=False), specs(st.just(FlatPrice(currency="USD", amount=Decimal(1))), st.none()))
def test_segments_are_contiguous_ordered_within_the_period_and_each_under_the_version_in_force(contract, spec_of):
    parts = segments(contract.versions, spec_of, contract.period, contract.billing_start, contract.ends_at)
    if contract.low >= contract.high:  # ended before the period (or the billing) started: nothing of it
        assert parts == []
        return
    # They cover [max(period start, billing start), min(period end, end)) exactly, in order, without gap
    # or overlap, and none is empty
    assert parts[0].start == contract.low and parts[-1].end == contract.high
    assert all(part.start < part.end for part in parts)
    assert all(before.end == after.start for before, after in pairwise(parts))
    assert all(contract.period.start <= part.start and part.end <= contract.period.end for part in parts)
    # Each is under the version in force at its start, throughout: it is cut at every later change
    for part in parts:
        assert part.plan_version == in_force(contract.versions, part.start)
        assert part.spec is spec_of[part.plan_version]
        assert not any(part.start < since < part.end for since, _ in contract.versions)


# --- lines and sums ---------------------------------------------------------------------------------------------

@st.composite
def invoices(draw: st.DrawFn):
    currency = draw(st.sampled_from(CURRENCIES))
    contract = draw(contracts())
    spec_of = draw(specs(prices(currency), st.none() | money("5000")))
    usage, events = draw(usages(contract.period))
    conversion = {CREDITS: draw(decimals("0.0001", "2", 4))}
    tax_rate = draw(TAX_RATES)
    return currency, contract, spec_of, usage, events, conversion, tax_rate


def unrounded(line: InvoiceLine, price: Price, usage: Usage, conversion: dict[str, Decimal]) -> Decimal:
    """A metered line's charge before rounding, in the invoice currency (rated by domain.pricing)."""
    if isinstance(price, PercentagePrice):
        transactions = usage.transactions(price.meter_code, line.period_start, line.period_end)
        charge = rate_transactions(price, transactions).amount
    else:
        charge = rate(price, usage.quantity(price.meter_code, line.period_start, line.period_end)).amount
    return charge * conversion[price.pricing_unit] if price.pricing_unit is not None else charge


def closing(invoice: tuple) -> tuple[list[Segment], list[InvoiceLine], Sums]:
    """A generated invoice's closing segments, lines and sums."""
    currency, contract, spec_of, usage, _, conversion, tax_rate = invoice
    period = contract.period
    parts = segments(contract.versions, spec_of, period, contract.billing_start, contract.ends_at)
    lines = closing_lines("pro", parts, period, usage, conversion, currency, billed_in_advance(contract, spec_of))
    return parts, lines, sums(lines, parts, period, currency, tax_rate)


@PROPERTY
@given(invoices())
def test_the_subtotal_is_the_sum_of_line_amounts_each_rounded_half_up_to_the_minor_unit(invoice):
    currency, _, _, usage, _, conversion, _ = invoice
    parts, lines, found = closing(invoice)
    # Σ line amounts == subtotal, exactly
    assert found.subtotal == sum((line.amount for line in lines), Decimal(0))
    # Every line amount (and every sum) is in whole minor units, written with the currency's places
    for amount in [line.amount for line in lines] + [found.subtotal, found.commitment_true_up, found.tax, found.total]:
        assert amount.as_tuple().exponent == -places(currency), (amount, currency)
    # Each metered line is its exact charge (a pricing unit converted first) rounded half-up once, and
    # lies within half a minor unit of it; a tiered line's breakdown is that charge, unrounded
    metered = [(part, price) for part in parts for price in part.spec.prices if not isinstance(price, FlatPrice)]
    metered_lines = [line for line in lines if line.meter_code is not None]
    assert len(metered_lines) == len(metered)
    for line, (part, price) in zip(metered_lines, metered, strict=True):
        assert (line.period_start, line.period_end, line.meter_code) == (part.start, part.end, price.meter_code)
        exact = Fraction(unrounded(line, price, usage, conversion))
        assert line.amount == half_up(exact, currency)
        assert abs(Fraction(line.amount) - exact) <= minor(currency) / 2
        if line.tiers:
            tiered = sum((tier.amount for tier in line.tiers), Decimal(0))
            assert half_up(Fraction(tiered) * Fraction(conversion.get(price.pricing_unit or "", Decimal(1))),
                           currency) == line.amount


@PROPERTY
@given(invoices())
def test_true_up_tax_and_total_follow_api_md_s_order_with_tax_rounded_once(invoice):
    currency, contract, _, _, _, _, tax_rate = invoice
    period = contract.period
    parts, lines, found = closing(invoice)
    subtotal = Fraction(found.subtotal)
    # true-up: what the minimum commitment, prorated exactly over the segments (each version's own),
    # rounded half-up once, exceeds the subtotal by; never negative
    minimum = sum((share(part.spec.minimum_commitment, period, part.start, part.end)
                   for part in parts if part.spec.minimum_commitment is not None), Fraction(0))
    assert found.commitment_true_up == max(half_up(minimum, currency) - found.subtotal, Decimal(0))
    # tax == round_half_up((subtotal + true_up) x rate), rounded once, on both
    assert found.tax == half_up((subtotal + Fraction(found.commitment_true_up)) * Fraction(tax_rate), currency)
    assert found.tax_rate == tax_rate
    # total = subtotal + true-up + tax; nothing credited yet; all of it due
    assert found.total == found.subtotal + found.commitment_true_up + found.tax
    assert found.credits_applied == 0 and found.amount_due == found.total


# --- proration of flat fees -------------------------------------------------------------------------------------

@PROPERTY
@given(st.sampled_from(CURRENCIES).flatmap(lambda c: st.tuples(st.just(c), contracts(), money(currency=c))))
def test_a_flat_fee_prorated_over_a_period_s_segments_adds_up_to_at_most_the_whole_fee(example):
    """An arrears fee F, the same in every version, billed over the n segments of a period.

    What is asserted, precisely, with |s| a segment's length and |P| the whole period's (a short
    calendar first period keeps the whole period's length):
    - each line is F x |s| / |P| (exact) rounded half-up: off by at most half a minor unit;
    - before rounding, the shares add up to F x (covered / |P|) <= F, and to exactly F when the
      segments cover the whole period (and to less when they do not, for F > 0);
    - so the line amounts add up to at most F + n/2 minor units, and to within n/2 minor units of
      F x covered / |P| (of F itself, when the segments cover the period)."""
    currency, contract, fee = example
    spec = PlanVersionSpec(prices=(FlatPrice(currency=currency, amount=fee, pay_in="arrears"),))
    spec_of = dict.fromkeys(VERSIONS, spec)
    period = contract.period
    parts = segments(contract.versions, spec_of, period, contract.billing_start, contract.ends_at)
    nothing = Usage(lambda *_: Decimal(0), lambda *_: [])
    lines = closing_lines("pro", parts, period, nothing, {}, currency, None)
    assert [(line.period_start, line.period_end) for line in lines] == [(part.start, part.end) for part in parts]
    exact = [share(fee, period, part.start, part.end) for part in parts]
    for line, amount in zip(lines, exact, strict=True):
        assert line.amount == half_up(amount, currency)
        assert abs(Fraction(line.amount) - amount) <= minor(currency) / 2
    covered = sum((microseconds(part.start, part.end) for part in parts), 0)
    assert sum(exact, Fraction(0)) == Fraction(fee) * covered / period.microseconds <= fee
    whole = covered == period.microseconds
    assert (sum(exact, Fraction(0)) == fee) == (whole or fee == 0)
    billed, n = sum((Fraction(line.amount) for line in lines), Fraction(0)), len(lines)
    assert billed <= Fraction(fee) + n * minor(currency) / 2
    assert abs(billed - sum(exact, Fraction(0))) <= n * minor(currency) / 2
    if whole:
        assert abs(billed - Fraction(fee)) <= n * minor(currency) / 2


@PROPERTY
@given(st.sampled_from(CURRENCIES).flatmap(lambda c: st.tuples(
    st.just(c), contracts(), st.fixed_dictionaries({n: money(currency=c) for n in VERSIONS}))))
def test_advance_fees_and_their_adjustments_charge_each_version_for_its_own_part(example):
    """An advance fee per version. The advance invoice charges the version in force at the period's
    start up to the period's end; the closing invoice credits it from the first change (or the end)
    and charges each later version for its part. Net, each version pays F_v x |s| / |P| for its
    segments, within half a minor unit per line (the advance line, the credit and one per later segment)."""
    currency, contract, fees = example
    spec_of = {n: PlanVersionSpec(prices=(FlatPrice(currency=currency, amount=fees[n], pay_in="advance"),))
               for n in VERSIONS}
    period = contract.period
    parts = segments(contract.versions, spec_of, period, contract.billing_start, contract.ends_at)
    billed = billed_in_advance(contract, spec_of)
    advance = advance_lines("pro", billed, period, {}, currency)
    nothing = Usage(lambda *_: Decimal(0), lambda *_: [])
    adjustments = closing_lines("pro", parts, period, nothing, {}, currency, billed)
    # Nothing to adjust when one version ran to the period's end; else a credit and one line per later part
    unchanged = len(parts) == 1 and parts[0].end == period.end
    assert len(adjustments) == (0 if unchanged else len(parts))
    assert all(line.amount <= 0 for line in adjustments[:1] if not unchanged)  # the credit comes first
    assert all(period.start <= line.period_start < line.period_end <= period.end for line in advance + adjustments)
    exact = sum((share(fees[part.plan_version], period, part.start, part.end) for part in parts), Fraction(0))
    paid = sum((Fraction(line.amount) for line in advance + adjustments), Fraction(0))
    assert abs(paid - exact) <= len(advance + adjustments) * minor(currency) / 2


# --- amendments at random instants ------------------------------------------------------------------------------

@PROPERTY
@given(st.sampled_from(CURRENCIES), contracts(), st.data())
def test_usage_is_rated_once_per_segment_and_every_event_of_the_billed_range_counts_once(currency, contract, data):
    """Amendments cut the period, never the usage: the segments' quantities add up to the usage of
    [max(period start, billing start), min(period end, end)), each event in exactly one segment."""
    usage, events = data.draw(usages(contract.period))
    spec = PlanVersionSpec(prices=(PerUnitPrice(meter_code="tokens", currency=currency, unit_amount=Decimal(1)),))
    spec_of = dict.fromkeys(VERSIONS, spec)
    parts = segments(contract.versions, spec_of, contract.period, contract.billing_start, contract.ends_at)
    lines = closing_lines("pro", parts, contract.period, usage, {}, currency, None)
    assert [(line.period_start, line.period_end) for line in lines] == [(part.start, part.end) for part in parts]
    inside = [value for when, value in events["tokens"] if contract.low <= when < contract.high]
    assert sum((line.quantity for line in lines), Decimal(0)) == sum(inside, Decimal(0))
    for when, _ in events["tokens"]:
        holding = [line for line in lines if line.period_start <= when < line.period_end]
        assert len(holding) == (1 if contract.low <= when < contract.high else 0)
