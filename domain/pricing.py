"""Rating: what a price charges for one period's usage, or for a period's transactions.

Pure Decimal math, exactly as API.md "Pricing semantics" fixes it. Every amount here is unrounded;
`domain.money.round_money` rounds each invoice line later (DESIGN.md rule 2). Prices come in
checked (`domain.price`), so a broken price or a negative quantity here is a programmer error.
"""

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import assert_never

import msgspec

from domain.price import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Tier,
    VolumePrice,
)

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)


class TierCharge(msgspec.Struct, frozen=True, kw_only=True):
    """What one tier charged: `units` of the tier (from_units, up_to] plus its flat amount."""

    index: int  # 0-based position of the tier in the price
    from_units: Decimal  # exclusive lower bound: the previous tier's up_to, 0 for the first
    up_to: Decimal | None  # inclusive upper bound; None for the last tier
    units: Decimal  # graduated: the units inside this tier; volume: every unit
    unit_amount: Decimal
    flat_amount: Decimal  # the tier's flat amount when charged, else 0
    amount: Decimal  # units x unit_amount + flat_amount, unrounded


class Charge(msgspec.Struct, frozen=True, kw_only=True):
    """The unrounded charge of one price, with its tier breakdown (empty for untiered prices)."""

    amount: Decimal
    tiers: tuple[TierCharge, ...] = ()


class Transaction(msgspec.Struct, frozen=True):
    """One transaction rated by a percentage price: one event of its `sum` meter."""

    event_id: str
    timestamp: datetime
    amount: Decimal


def rate(
    price: FlatPrice | PerUnitPrice | PackagePrice | GraduatedPrice | VolumePrice,
    quantity: Decimal,
) -> Charge:
    """The charge of `price` for `quantity` units used in one period.

    A flat price charges its amount for the period whatever the quantity. A percentage price rates
    transactions, not a quantity: use `rate_transactions`.
    """
    assert isinstance(quantity, Decimal), quantity
    assert quantity.is_finite(), quantity
    assert quantity >= 0, quantity
    match price:
        case FlatPrice():
            charge = Charge(amount=Decimal(price.amount))
        case PerUnitPrice():
            charge = Charge(amount=quantity * price.unit_amount)
        case PackagePrice():
            charge = Charge(amount=_package_amount(price, quantity))
        case GraduatedPrice():
            charge = _graduated(price.tiers, quantity)
        case VolumePrice():
            charge = _volume(price.tiers, quantity)
        case _:
            assert_never(price)
    assert charge.amount >= 0, charge
    assert not charge.tiers or charge.amount == sum((tier.amount for tier in charge.tiers), ZERO)
    return charge


def _package_amount(price: PackagePrice, quantity: Decimal) -> Decimal:
    """ceil(max(usage - free_units, 0) / package_size) x package_amount, with no inexact division."""
    billable = max(quantity - price.free_units, ZERO)
    packages, remainder = divmod(billable, price.package_size)
    if remainder > 0:
        packages += ONE
    assert packages >= 0, packages
    assert packages * price.package_size >= billable, (packages, billable)
    return packages * price.package_amount


def _graduated(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    """Each tier reached prices its own units, plus its flat amount once.

    Tier 0 is always reached (zero usage lies in it); tier i > 0 is reached when usage rises above
    the previous tier's up_to. Usage exactly at an up_to stays in that tier.
    """
    charges: list[TierCharge] = []
    from_units = ZERO
    for index, tier in enumerate(tiers):
        if index > 0 and quantity <= from_units:
            break
        top = quantity if tier.up_to is None else min(quantity, tier.up_to)
        charges.append(_tier_charge(index, from_units, tier, top - from_units))
        if tier.up_to is not None:
            from_units = tier.up_to
    assert charges, "the first tier is always reached"
    assert sum((charge.units for charge in charges), ZERO) == quantity, (charges, quantity)
    return Charge(amount=sum((charge.amount for charge in charges), ZERO), tiers=tuple(charges))


def _volume(tiers: tuple[Tier, ...], quantity: Decimal) -> Charge:
    """The tier the total reaches prices every unit, plus that tier's flat amount."""
    from_units = ZERO
    for index, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            charge = _tier_charge(index, from_units, tier, quantity)
            return Charge(amount=charge.amount, tiers=(charge,))
        from_units = tier.up_to
    raise AssertionError(f"the last tier has up_to null, so it holds any usage: {tiers!r}")


def _tier_charge(index: int, from_units: Decimal, tier: Tier, units: Decimal) -> TierCharge:
    assert units >= 0, units
    # Decimal(...) copies a decoded Amount into a plain Decimal, so the breakdown encodes as-is.
    return TierCharge(
        index=index,
        from_units=Decimal(from_units),
        up_to=None if tier.up_to is None else Decimal(tier.up_to),
        units=Decimal(units),
        unit_amount=Decimal(tier.unit_amount),
        flat_amount=Decimal(tier.flat_amount),
        amount=units * tier.unit_amount + tier.flat_amount,
    )


def rate_transactions(price: PercentagePrice, transactions: Sequence[Transaction]) -> Charge:
    """The charge of a percentage price for one period's transactions (in any order).

    Transactions are taken in event-time order, ties by event_id. Each paid transaction costs
    amount x rate / 100 + fixed_fee, clamped to [min_per_transaction, max_per_transaction].

    The allowance, in that order: a transaction is free while the allowance is open. It has two
    limits, free_units (a count of transactions) and free_amount (transaction value in total), and
    ends when EITHER runs out. A zero limit means "this limit is not given", not "already used up":
      - free_units 3, free_amount 0: the first 3 transactions are free, whatever their value;
      - free_units 0, free_amount 100: transactions are free until their value reaches 100 in total;
      - both given: free until 3 transactions are free or 100 of value is free, whichever is first;
      - both 0: there is no allowance; every transaction is paid.
    A fractional free_units frees only whole transactions (2.5 frees 2). A transaction worth more
    than the free value left pays the percentage on its part above it, plus the fixed fee, clamped,
    and counts as paid; the allowance ends with it. A transaction that ends the allowance exactly
    (its value equals the free value left) is free. Free transactions cost nothing and are not
    clamped. No transactions: zero. Transaction amounts are never negative (refunds are not
    transactions here); event_ids are unique (usage is de-duplicated at ingest).
    """
    assert len({transaction.event_id for transaction in transactions}) == len(transactions)
    ordered = sorted(transactions, key=lambda transaction: (transaction.timestamp, transaction.event_id))
    amount = ZERO
    for chargeable in _chargeable_values(price, [transaction.amount for transaction in ordered]):
        if chargeable is not None:
            amount += _transaction_fee(price, chargeable)
    assert amount >= 0, amount
    return Charge(amount=amount)


def _chargeable_values(price: PercentagePrice, amounts: list[Decimal]) -> list[Decimal | None]:
    """Per transaction in order: the value its percentage is taken on, or None when it is free."""
    units_left = price.free_units if price.free_units > 0 else None
    value_left = price.free_amount if price.free_amount > 0 else None
    chargeable: list[Decimal | None] = []
    for amount in amounts:
        assert isinstance(amount, Decimal), amount
        assert amount >= 0, amount
        if not _allowance_open(units_left, value_left):
            chargeable.append(amount)
        elif value_left is not None and amount > value_left:
            chargeable.append(amount - value_left)  # uses up the allowance part-way: paid
            value_left = ZERO
        else:
            chargeable.append(None)
            units_left = None if units_left is None else units_left - ONE
            value_left = None if value_left is None else value_left - amount
    assert len(chargeable) == len(amounts)
    return chargeable


def _allowance_open(units_left: Decimal | None, value_left: Decimal | None) -> bool:
    """Open while every given limit has room; None is a limit that was not given."""
    if units_left is None and value_left is None:
        return False
    units_room = units_left is None or units_left >= ONE
    value_room = value_left is None or value_left > 0
    return units_room and value_room


def _transaction_fee(price: PercentagePrice, chargeable: Decimal) -> Decimal:
    fee = chargeable * price.rate / HUNDRED + price.fixed_fee
    if price.min_per_transaction is not None:
        fee = max(fee, price.min_per_transaction)
    if price.max_per_transaction is not None:
        fee = min(fee, price.max_per_transaction)
    assert fee >= 0, fee
    return Decimal(fee)
