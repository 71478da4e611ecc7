"""Issued invoices: drafted at a period's start (advance fees) or end (the rest), then finalized with
the tenant's next number, voided, or paid. And the tenant's invoice numbers, gapless.

A draft holds no amounts: until it is finalized it is computed when read (late usage within the
grace period lands on it). Finalizing records the computed invoice in the event: from then on it is
the invoice, byte for byte, whatever arrives later.

An invoice's id derives from (subscription, kind, period start): a period is drafted once, however
many clocks run. A number is taken in the same save as the finalize, from one aggregate per tenant:
two finalizes at once both read number N; the second save fails and nothing is skipped.
"""

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.errors import Conflict, Invalid
from domain.invoice import Invoice
from domain.money import Amount, round_money
from domain.periods import Period
from domain.subscription import Subscription

Kind = Literal["advance", "closing"]
Status = Literal["draft", "finalized", "paid", "void"]
NUMBER_DIGITS = 6


class Payment(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    amount: Amount | None = None  # none: all that is still due


class Voiding(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] | None = None


class CreditLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    line_index: Annotated[int, msgspec.Meta(ge=0)]
    amount: Amount


class CreditNoteSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Credit lines of the invoice (before tax; tax is added at the invoice's rate, rounded once),
    or an `amount` (tax included)."""

    invoice_id: str
    lines: Annotated[tuple[CreditLine, ...], msgspec.Meta(max_length=1000)] | None = None
    amount: Amount | None = None
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]

    def __post_init__(self) -> None:
        if (self.lines is None) == (self.amount is None):
            raise ValueError("lines: give lines or amount, not both")


class WrongStatus(Conflict):
    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"the invoice is {status}: it cannot be {action}")


class IssuedInvoice(Aggregate):
    class Drafted(Aggregate.Created):
        tenant_id: UUID
        customer: str
        subscription_id: UUID
        kind: str
        period_start: datetime
        period_end: datetime
        key: str  # tells apart invoices of the same kind and start (a wallet's top-ups: their number)

    class Finalized(Aggregate.Event):
        number: str
        content: Invoice

    class Voided(Aggregate.Event):
        reason: str | None

    class Paid(Aggregate.Event):
        amount: Decimal

    class Credited(Aggregate.Event):
        number: str
        lines: list  # [[line index, amount], ...]: what each line gave back, before tax
        subtotal: Decimal
        tax: Decimal
        total: Decimal
        reason: str

    @staticmethod
    def create_id(subscription_id: UUID, kind: str, period_start: datetime, key: str = "") -> UUID:
        return uuid5(subscription_id, f"invoice:{kind}:{period_start.isoformat()}" + (f":{key}" if key else ""))

    @event(Drafted)
    def __init__(self, tenant_id: UUID, customer: str, subscription_id: UUID, kind: str, period_start: datetime,
                 period_end: datetime, key: str = "") -> None:
        self.tenant_id, self.customer, self.subscription_id, self.kind = tenant_id, customer, subscription_id, kind
        self.period_start, self.period_end = period_start, period_end
        self.status: Status = "draft"
        self.content: Invoice | None = None
        self.paid = Decimal(0)
        self.credited = Decimal(0)
        self.credited_lines: dict[int, Decimal] = {}
        self.credit_notes = 0

    def finalize(self, number: str, content: Invoice) -> None:
        if self.status != "draft":
            raise WrongStatus(self.status, "finalized")
        self._finalized(number, content)

    @event(Finalized)
    def _finalized(self, number: str, content: Invoice) -> None:
        self.status, self.content = "finalized", content

    def void(self, reason: str | None) -> None:
        if self.status not in ("draft", "finalized") or self.paid:
            raise WrongStatus("paid" if self.paid else self.status, "voided")
        self._voided(reason)

    @event(Voided)
    def _voided(self, reason: str | None) -> None:
        self.status = "void"

    def pay(self, amount: Decimal | None) -> None:
        if self.status != "finalized" or self.content is None:
            raise WrongStatus(self.status, "paid")
        due = self.content.amount_due - self.paid
        amount = due if amount is None else amount
        if amount > due:
            raise Invalid("amount", f"{amount} is more than the {due} still due")
        if amount <= 0:
            raise Invalid("amount", "nothing is due")
        self._paid(Decimal(amount))  # a plain Decimal in the event (the store knows no wire types)

    @event(Paid)
    def _paid(self, amount: Decimal) -> None:
        self.paid += amount
        if self.content is not None and self.paid >= self.content.amount_due:
            self.status = "paid"


    def credit(self, spec: CreditNoteSpec) -> tuple[str, Decimal, Decimal, Decimal, list[list]]:
        """A credit note against the finalized invoice: never more than is left of a line or of the
        invoice, so it never takes the invoice below zero."""
        if self.status not in ("finalized", "paid") or self.content is None:
            raise WrongStatus(self.status, "credited")
        content, left = self.content, self.content.total - self.credited
        if spec.amount is not None:
            total = Decimal(spec.amount)
            if not 0 < total <= left:
                raise Invalid("amount", f"between 0 and the {left} left to credit, not {total}")
            tax = round_money(total * content.tax_rate / (1 + content.tax_rate), content.currency)
            lines: list[list] = []
        else:
            lines = self._credit_lines(spec.lines or ())
            subtotal = sum((amount for _, amount in lines), Decimal(0))
            tax = round_money(subtotal * content.tax_rate, content.currency)
            total = subtotal + tax
            if total > left:
                raise Invalid("lines", f"{total} with tax is more than the {left} left to credit")
        number = f"{self.content.number}-CN{self.credit_notes + 1}"
        self._credited(number, lines, total - tax, tax, total, spec.reason)
        return number, total - tax, tax, total, lines

    def _credit_lines(self, lines: Sequence[CreditLine]) -> list[list]:
        assert self.content is not None
        found: dict[int, Decimal] = {}
        for index, line in enumerate(lines):
            if line.line_index >= len(self.content.lines):
                raise Invalid(f"lines[{index}].line_index", f"the invoice has {len(self.content.lines)} lines")
            billed = self.content.lines[line.line_index].amount
            left = billed - self.credited_lines.get(line.line_index, Decimal(0)) - found.get(line.line_index, 0)
            if not 0 < line.amount <= left or line.amount != round_money(line.amount, self.content.currency):
                raise Invalid(f"lines[{index}].amount", f"between 0 and the {left} left on line "
                                                        f"{line.line_index}, in whole minor units")
            found[line.line_index] = found.get(line.line_index, Decimal(0)) + Decimal(line.amount)
        return [[index, amount] for index, amount in found.items()]

    @event(Credited)
    def _credited(self, number: str, lines: list, subtotal: Decimal, tax: Decimal, total: Decimal, reason: str) -> None:
        self.credit_notes += 1
        self.credited += total
        for index, amount in lines:
            self.credited_lines[index] = self.credited_lines.get(index, Decimal(0)) + Decimal(amount)


class IssuedCreditNote(Aggregate):
    """A credit note: issued once, never changed (the invoice keeps what is left to credit)."""

    class Issued(Aggregate.Created):
        tenant_id: UUID
        invoice_id: UUID
        customer: str
        number: str
        currency: str
        lines: list  # [[line index, amount], ...]
        subtotal: Decimal
        tax: Decimal
        total: Decimal
        reason: str

    @staticmethod
    def create_id(invoice_id: UUID, number: str) -> UUID:
        return uuid5(invoice_id, f"credit-note:{number}")

    @event(Issued)
    def __init__(self, tenant_id: UUID, invoice_id: UUID, customer: str, number: str, currency: str, lines: list,
                 subtotal: Decimal, tax: Decimal, total: Decimal, reason: str) -> None:
        self.tenant_id, self.invoice_id, self.number, self.total = tenant_id, invoice_id, number, total


class InvoiceNumbers(Aggregate):
    """A tenant's invoice numbers: 1, 2, 3, ... with no gap."""

    class Opened(Aggregate.Created):
        tenant_id: UUID

    class Taken(Aggregate.Event):
        number: int

    @staticmethod
    def create_id(tenant_id: UUID) -> UUID:
        return uuid5(tenant_id, "invoice-numbers")

    @event(Opened)
    def __init__(self, tenant_id: UUID) -> None:
        self.tenant_id, self.last = tenant_id, 0

    def take(self, prefix: str) -> str:
        self._taken(self.last + 1)
        return f"{prefix}{self.last:0{NUMBER_DIGITS}d}"

    @event(Taken)
    def _taken(self, number: int) -> None:
        self.last = number


def billing_dates(subscription: Subscription, grace: timedelta,
                  now: datetime) -> Iterator[tuple[Period, Kind, datetime]]:
    """Each invoice due by `now`: (period, kind, when it finalizes on its own). The advance invoice
    is due at a period's start and final at once; the closing one at the period's end (or the
    subscription's, if earlier), final after the grace period, during which late usage lands on it."""
    ends_at = subscription.ends_at
    moment = subscription.billing_start
    while moment <= now and (ends_at is None or moment < ends_at):  # ended before billing began: nothing
        period = subscription.period_at(moment)
        yield period, "advance", period.start
        end = min(period.end, subscription.ends_at) if subscription.ends_at is not None else period.end
        if end <= now:
            yield period, "closing", end + grace
        if subscription.ends_at is not None and period.end >= subscription.ends_at:
            return
        moment = period.end


def next_due(subscription: Subscription, dates: Iterable[tuple[Period, Kind, datetime]], now: datetime) -> datetime:
    """When the subscription next has an invoice to draft or finalize, after billing `dates` at `now`:
    a draft's finalize time still ahead, the next period boundary, or its end."""
    ahead = [finalize_at for _, _, finalize_at in dates if finalize_at > now]
    ends_at = subscription.ends_at
    if now < subscription.billing_start:
        ahead.append(subscription.billing_start)
    elif ends_at is None or ends_at > now:
        boundary = subscription.period_at(now).end
        ahead.append(boundary if ends_at is None else min(boundary, ends_at))
    return min(ahead, default=datetime.max.replace(tzinfo=now.tzinfo))


class Cutoff(msgspec.Struct, frozen=True):
    """Usage before `before` is refused: it falls in a period invoiced as `number`, closed at `closed_at`."""

    before: datetime
    number: str
    closed_at: datetime


def usage_cutoff(closed: Iterable[tuple[datetime, datetime, str]], grace: timedelta, now: datetime) -> Cutoff | None:
    """From a customer's finalized closing invoices (period start, end, number): the instant before
    which its usage is refused. Usage for a finalized period is taken until the period's grace ends
    (it becomes an adjustment on the next invoice), and refused after."""
    latest = max(closed, default=None)
    if latest is None:
        return None
    start, end, number = latest
    if now >= end + grace:
        return Cutoff(end, number, end + grace)
    if now >= start + grace:  # earlier periods: their grace ended by this one's start + grace
        return Cutoff(start, number, start + grace)
    return None
