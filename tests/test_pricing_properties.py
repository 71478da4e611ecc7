"""Money invariants of rating, checked on generated prices and usage, with floats trapped."""

import decimal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.money import trap_floats
from domain.price import (
    GraduatedPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Tier,
    VolumePrice,
)
from domain.pricing import Transaction, rate, rate_transactions

# No conftest: the trap is set here, at import, for every test of this module (and this process).
trap_floats()

START = datetime(2025, 1, 1, tzinfo=UTC)
PROPERTY = settings(max_examples=200, deadline=None)


def decimals(low: str, high: str, places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=Decimal(low), max_value=Decimal(high), places=places,
        allow_nan=False, allow_infinity=False,
    )


quantities = decimals("0", "100000", 3)
unit_amounts = decimals("0", "100", 6)


@st.composite
def tier_lists(draw: st.DrawFn) -> tuple[Tier, ...]:
    """One to five tiers with rising decimal bounds; the last has none."""
    bounds = sorted(draw(st.lists(decimals("0.001", "50000", 3), unique=True, max_size=4)))
    return tuple(
        Tier(up_to=up_to, unit_amount=draw(unit_amounts), flat_amount=draw(decimals("0", "50", 2)))
        for up_to in [*bounds, None]
    )


graduated_prices = tier_lists().map(lambda tiers: GraduatedPrice(meter_code="gb", currency="USD", tiers=tiers))
volume_prices = tier_lists().map(lambda tiers: VolumePrice(meter_code="gb", currency="USD", tiers=tiers))
per_unit_prices = unit_amounts.map(
    lambda amount: PerUnitPrice(meter_code="tokens", currency="USD", unit_amount=amount)
)
package_prices = st.builds(
    lambda amount, size, free_units: PackagePrice(
        meter_code="gb", currency="USD", package_amount=amount, package_size=size, free_units=free_units
    ),
    decimals("0", "100", 2), decimals("0.001", "1000", 3), decimals("0", "1000", 3),
)


@st.composite
def percentage_prices(draw: st.DrawFn) -> PercentagePrice:
    clamps = sorted(draw(st.lists(decimals("0", "20", 2), min_size=2, max_size=2)))
    return PercentagePrice(
        meter_code="payment_volume",
        currency="USD",
        rate=draw(decimals("0", "100", 3)),
        fixed_fee=draw(decimals("0", "1", 2)),
        min_per_transaction=draw(st.sampled_from([None, clamps[0]])),
        max_per_transaction=draw(st.sampled_from([None, clamps[1]])),
        free_units=draw(st.sampled_from([Decimal(0), Decimal(1), Decimal(3)])),
        free_amount=draw(decimals("0", "500", 2)),
    )


def transactions_in_time_order(amounts: list[Decimal]) -> list[Transaction]:
    return [
        Transaction(f"txn_{index:04}", START + timedelta(seconds=index), amount)
        for index, amount in enumerate(amounts)
    ]


transaction_amounts = st.lists(decimals("0", "1000", 2), max_size=30)


@PROPERTY
@given(graduated_prices, quantities)
def test_a_graduated_charge_is_the_sum_of_its_tier_breakdown(price, quantity):
    # Given any graduated price and usage
    # When it is rated
    charge = rate(price, quantity)
    # Then the charge is the sum of its tiers, and the tiers hold exactly the usage
    assert charge.amount == sum((tier.amount for tier in charge.tiers), Decimal(0))
    assert sum((tier.units for tier in charge.tiers), Decimal(0)) == quantity


@PROPERTY
@given(st.one_of(per_unit_prices, package_prices, graduated_prices), quantities, quantities)
def test_charges_never_fall_as_usage_grows(price, usage, more_usage):
    # Given a per-unit, package or graduated price and two usages, one at least the other
    low, high = sorted([usage, more_usage])
    # When both are rated
    # Then the larger usage never charges less
    assert rate(price, low).amount <= rate(price, high).amount


@PROPERTY
@given(st.one_of(per_unit_prices, package_prices, graduated_prices, volume_prices), quantities)
def test_a_charge_is_never_negative(price, quantity):
    # Given any priced usage
    # When it is rated
    # Then the charge, and each of its tiers, is zero or more
    charge = rate(price, quantity)
    assert charge.amount >= 0
    assert all(tier.amount >= 0 for tier in charge.tiers)


@PROPERTY
@given(percentage_prices(), transaction_amounts)
def test_a_percentage_charge_never_falls_as_later_transactions_arrive(price, amounts):
    # Given a percentage price and a period's transactions, each later than the one before
    transactions = transactions_in_time_order(amounts)
    # When the period is rated after each new transaction
    charges = [rate_transactions(price, transactions[:count]).amount for count in range(len(transactions) + 1)]
    # Then the charge starts at zero and never falls
    assert charges[0] == 0
    assert all(before <= after for before, after in zip(charges, charges[1:]))


@PROPERTY
@given(percentage_prices(), transaction_amounts, st.randoms(use_true_random=False))
def test_a_percentage_charge_does_not_depend_on_the_order_transactions_are_given(price, amounts, shuffler):
    # Given a period's transactions in event-time order
    transactions = transactions_in_time_order(amounts)
    shuffled = list(transactions)
    shuffler.shuffle(shuffled)
    # When they are rated as received, in any order
    # Then the charge is the same
    assert rate_transactions(price, shuffled) == rate_transactions(price, transactions)


def test_a_float_is_refused_by_decimal_math_once_floats_are_trapped():
    # Given the float trap set at import
    assert decimal.getcontext().traps[decimal.FloatOperation]
    # When a float is turned into a Decimal, or compared with one
    # Then FloatOperation is raised
    with pytest.raises(decimal.FloatOperation):
        Decimal(1.5)
    with pytest.raises(decimal.FloatOperation):
        Decimal("1.5") < 2.0


def test_rating_runs_with_floats_trapped():
    # Given the float trap set at import, a graduated price and percentage transactions
    assert decimal.getcontext().traps[decimal.FloatOperation]
    tiers = (Tier(up_to=Decimal("0.1"), unit_amount=Decimal("10")), Tier(up_to=None, unit_amount=Decimal("0.000002")))
    graduated = GraduatedPrice(meter_code="tokens", currency="USD", tiers=tiers)
    fees = PercentagePrice(meter_code="volume", currency="USD", rate=Decimal("2.9"), fixed_fee=Decimal("0.30"),
                           free_amount=Decimal("50"), min_per_transaction=Decimal("0.50"))
    amounts = [Decimal("30"), Decimal("30"), Decimal("1")]
    # When they are rated
    graduated_amount = rate(graduated, Decimal("1234567.1")).amount
    fees_amount = rate_transactions(fees, transactions_in_time_order(amounts)).amount
    # Then the math succeeds, exactly: 30 free, 10 of 30 paid (0.59), 1 lifted to the 0.50 minimum
    assert graduated_amount == Decimal("1") + Decimal("1234567") * Decimal("0.000002")
    assert fees_amount == Decimal("0.59") + Decimal("0.50")
