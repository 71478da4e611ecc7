"""Invoices as pure functions of the contract, its price versions and the usage: lines, then sums.

A billing period `P` has two invoices. At its start, the `advance` one: the `pay_in: advance` flat
fees of the version in force then. At its end, the `closing` one (the upcoming invoice is its live
draft): the arrears flat fees, the metered prices, and the adjustments of the advance fees when the
contract changed during `P` (the unused part of the old version credited, the new one charged from
the change) or ended early (the unused part credited).

The period is cut into segments, one per contract version in force during it (and the
subscription's own start and end). Each segment's usage is rated by that segment's prices: a
change of version starts the tiers afresh. A flat fee is prorated by the second over the period's
real length (`domain.periods.prorate`).

Sums, in API.md's order: each line amount rounded half-up to the currency's minor unit; `subtotal`
= Σ lines; `commitment_true_up` = what the plan's `minimum_commitment` (prorated over the segments)
exceeds the subtotal by, rounded like a line; `tax` = (subtotal + true-up) × tax rate, rounded once;
`total`; `credits_applied` (what the wallets paid for the usage, never more than the total);
`amount_due`.
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from domain.money import Amount, round_money
from domain.periods import Period, prorate
from domain.plan_version import PlanVersionSpec
from domain.price import FlatPrice, PercentagePrice, Price
from domain.pricing import Charge, Transaction, rate, rate_transactions

ZERO = Decimal(0)
QUANTITY_PLACES = Decimal("0.000001")  # a prorated flat fee's quantity, as shown (its amount is exact)


class Segment(msgspec.Struct, frozen=True):
    """A part of a period under one contract version."""

    start: datetime
    end: datetime
    plan_version: int
    spec: PlanVersionSpec


class TierLine(msgspec.Struct, frozen=True, kw_only=True):
    from_units: Amount
    up_to: Amount | None
    units: Amount
    unit_amount: Amount
    flat_amount: Amount
    amount: Amount  # unrounded


class InvoiceLine(msgspec.Struct, frozen=True, kw_only=True):
    description: str
    meter_code: str | None = None
    period_start: datetime
    period_end: datetime
    quantity: Amount
    unit_amount: Amount | None = None
    tiers: tuple[TierLine, ...] | None = None
    amount: Amount  # rounded half-up to the currency's minor unit


class Sums(msgspec.Struct, frozen=True, kw_only=True):
    subtotal: Amount
    commitment_true_up: Amount
    tax_rate: Amount
    tax: Amount
    total: Amount
    credits_applied: Amount
    amount_due: Amount


class Usage(msgspec.Struct, frozen=True):
    """How the lines read usage: a meter's quantity over [start, end), and its transactions (for
    percentage prices, in event-time order, ties by event id)."""

    quantity: Callable[[str, datetime, datetime], Decimal]
    transactions: Callable[[str, datetime, datetime], list[Transaction]]


def segments(versions: Sequence[tuple[datetime, int]], specs: dict[int, PlanVersionSpec], period: Period,
             billing_start: datetime, ends_at: datetime | None) -> list[Segment]:
    """The parts of `period` under each contract version, within [billing_start, ends_at)."""
    low = max(period.start, billing_start)
    high = min(period.end, ends_at) if ends_at is not None else period.end
    found = []
    for index, (since, number) in enumerate(versions):
        until = versions[index + 1][0] if index + 1 < len(versions) else high
        start, end = max(since, low), min(until, high)
        if start < end:
            found.append(Segment(start, end, number, specs[number]))
    return found


def closing_lines(plan_code: str, parts: Sequence[Segment], period: Period, usage: Usage,
                  conversion: dict[str, Decimal], currency: str, billed_in_advance: Segment | None) -> list[InvoiceLine]:
    """The closing invoice's lines for one subscription's period. `billed_in_advance`: the version and
    range whose advance fees the period's advance invoice charged (none: nothing was)."""
    lines = []
    for part in parts:
        name = f"{plan_code} v{part.plan_version}"
        for price in part.spec.prices:
            if isinstance(price, FlatPrice):
                if price.pay_in == "arrears":
                    lines.append(_flat(f"{name}: fee", price, period, part.start, part.end, conversion, currency))
                continue
            lines.append(_metered(name, price, part, usage, conversion, currency))
    return lines + _advance_adjustments(plan_code, parts, period, conversion, currency, billed_in_advance)


def late_usage_lines(billed: Sequence[InvoiceLine], now: Sequence[InvoiceLine]) -> list[InvoiceLine]:
    """What a finalized invoice's lines would be now, beyond what it billed (usage that arrived
    within its grace period, after it was finalized, or voids): a line for each difference, for the
    next invoice. A finalized invoice is never edited."""
    before = {(line.description, line.period_start, line.period_end): line for line in billed}
    found = []
    for line in now:
        old = before.get((line.description, line.period_start, line.period_end))
        amount = line.amount - (old.amount if old else ZERO)
        if amount:
            quantity = line.quantity - (old.quantity if old else ZERO)
            found.append(msgspec.structs.replace(line, description=f"Late usage: {line.description}", tiers=None,
                                                 quantity=Amount(quantity), amount=Amount(amount)))
    return found


def advance_lines(plan_code: str, part: Segment, period: Period, conversion: dict[str, Decimal],
                  currency: str) -> list[InvoiceLine]:
    """The advance invoice's lines: the version's advance flat fees for `part` of the period."""
    return [_flat(f"{plan_code} v{part.plan_version}: fee", price, period, part.start, part.end, conversion, currency)
            for price in part.spec.prices if isinstance(price, FlatPrice) and price.pay_in == "advance"]


def _advance_adjustments(plan_code: str, parts: Sequence[Segment], period: Period, conversion: dict[str, Decimal],
                         currency: str, billed: Segment | None) -> list[InvoiceLine]:
    """What the advance invoice charged that the contract did not keep: from the first change (or an
    early end) the billed version is credited, and each later version charged for its own part."""
    if billed is None:
        return []
    kept = parts[0] if parts and parts[0].plan_version == billed.plan_version and parts[0].start == billed.start else None
    changed_at = kept.end if kept is not None else billed.start
    if changed_at >= billed.end:
        return []  # the whole billed range ran under the billed version
    lines = [_flat(f"{plan_code} v{billed.plan_version}: unused fee", price, period, changed_at, billed.end,
                   conversion, currency, sign=-1)
             for price in billed.spec.prices if isinstance(price, FlatPrice) and price.pay_in == "advance"]
    for part in parts:
        if part.start >= changed_at:
            lines += advance_lines(plan_code, part, period, conversion, currency)
    return lines


def _flat(description: str, price: FlatPrice, period: Period, start: datetime, end: datetime,
          conversion: dict[str, Decimal], currency: str, sign: int = 1) -> InvoiceLine:
    amount = sign * prorate(price.amount, period, start, end)
    fraction = (amount / price.amount if price.amount else Decimal(sign)).quantize(QUANTITY_PLACES)
    return InvoiceLine(description=description, period_start=start, period_end=end, quantity=Amount(fraction),
                       unit_amount=Amount(price.amount), amount=_money(amount, price, conversion, currency))


def _metered(name: str, price: Price, part: Segment, usage: Usage, conversion: dict[str, Decimal],
             currency: str) -> InvoiceLine:
    assert price.meter_code is not None, "a metered price names its meter"
    if isinstance(price, PercentagePrice):
        transactions = usage.transactions(price.meter_code, part.start, part.end)
        charge, quantity = rate_transactions(price, transactions), Decimal(len(transactions))
    else:
        quantity = usage.quantity(price.meter_code, part.start, part.end)
        charge = rate(price, quantity)
    return InvoiceLine(
        description=f"{name}: {price.meter_code} ({price.__struct_config__.tag})", meter_code=price.meter_code,
        period_start=part.start, period_end=part.end, quantity=Amount(quantity), unit_amount=_unit_amount(price),
        tiers=_tiers(charge), amount=_money(charge.amount, price, conversion, currency),
    )


def _unit_amount(price: Price) -> Amount | None:
    unit = getattr(price, "unit_amount", None)
    return Amount(unit) if unit is not None else None


def _tiers(charge: Charge) -> tuple[TierLine, ...] | None:
    if not charge.tiers:
        return None
    return tuple(TierLine(from_units=Amount(t.from_units), up_to=None if t.up_to is None else Amount(t.up_to),
                          units=Amount(t.units), unit_amount=Amount(t.unit_amount),
                          flat_amount=Amount(t.flat_amount), amount=Amount(t.amount)) for t in charge.tiers)


def _money(amount: Decimal, price: Price, conversion: dict[str, Decimal], currency: str) -> Amount:
    """The line amount in the invoice currency (a pricing unit converted at its rate), rounded once."""
    if price.pricing_unit is not None:
        amount *= conversion[price.pricing_unit]
    return Amount(round_money(amount, currency))


class Invoice(Sums, frozen=True, kw_only=True):
    """An invoice as API.md shapes it: its sums, and (the upcoming invoice has no id or number yet):"""

    id: str | None = None
    number: str | None = None
    customer: str
    subscription: str | None  # none: a wallet top-up's invoice
    wallet: str | None = None  # a top-up's: the wallet it buys credits for
    status: str  # upcoming | draft | finalized | paid | void
    currency: str
    period_start: datetime
    period_end: datetime
    lines: tuple[InvoiceLine, ...]
    paid: Amount | None = None  # issued invoices: payments recorded so far (not part of what was finalized)
    credited: Amount | None = None  # issued invoices: credit notes' totals so far (idem)


def sums(lines: Sequence[InvoiceLine], parts: Sequence[Segment], period: Period, currency: str,
         tax_rate: Decimal, credits: Decimal = ZERO) -> Sums:
    """`credits`: the fiat the customer's wallets paid for this invoice's usage (applied last, like a
    payment, rounded like a line, never more than the total)."""
    subtotal = round_money(sum((line.amount for line in lines), ZERO), currency)  # exact: lines are rounded
    minimum = sum((prorate(part.spec.minimum_commitment, period, part.start, part.end)
                   for part in parts if part.spec.minimum_commitment is not None), ZERO)
    true_up = max(round_money(minimum, currency) - subtotal, round_money(ZERO, currency))
    tax = round_money((subtotal + true_up) * tax_rate, currency)
    total = subtotal + true_up + tax
    credits = max(min(round_money(credits, currency), total), round_money(ZERO, currency))
    return Sums(subtotal=Amount(subtotal), commitment_true_up=Amount(true_up), tax_rate=Amount(tax_rate),
                tax=Amount(tax), total=Amount(total), credits_applied=Amount(credits), amount_due=Amount(total - credits))
