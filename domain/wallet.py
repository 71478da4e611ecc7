"""Wallets: credits a customer holds and spends, in grants.

A wallet's credits come in grants, `paid` or `promotional`, each with an optional expiry. Spending
takes them in one documented order (`spending_order`): the grant that expires first, then
promotional before paid, then the oldest. What the grants do not cover goes below zero only down to
the wallet's `overdraft_limit`; a later grant pays the overdraft back first. So, at every moment:

    balance = granted - spent - expired,  and  balance >= -overdraft_limit

`conversion_rate` is the fiat value of one credit when spent; `topup_conversion_rate` the fiat
price of one credit when bought (a promotion can sell credits cheap without changing what they
are worth on an invoice).

A debit records the usage position it covers (`through`): one at or below the last one recorded is
a replay or a retry, and changes nothing.
"""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, ExternalId, Name
from domain.errors import Conflict, Invalid
from domain.money import Amount, minor_unit
from domain.periods import Interval

GrantKind = Literal["paid", "promotional"]
Level = Literal["info", "warning", "critical"]
NEVER = datetime.max.replace(tzinfo=UTC)


def _positive(field: str, amount: Decimal | None) -> None:
    if amount is not None and amount <= 0:
        raise ValueError(f"{field}: must be more than 0")


class AppliesTo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    features: Annotated[tuple[Code, ...], msgspec.Meta(min_length=1, max_length=100)]


class AutoTopup(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """When the balance falls below `below`, buy `amount` credits (once per crossing)."""

    below: Amount
    amount: Amount
    invoice: bool = True

    def __post_init__(self) -> None:
        _positive("auto_topup.amount", self.amount)


class Alert(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Level
    below: Amount
    feature_code: Code | None = None


class WalletSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    customer: ExternalId
    name: Name
    credit_unit: Name
    currency: str
    conversion_rate: Amount  # fiat value of one credit, spent
    topup_conversion_rate: Amount | None = None  # fiat price of one credit, bought (none: conversion_rate)
    priority: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0  # lower is spent first
    overdraft_limit: Amount | None = None  # credits it may go below zero (none: 0)
    applies_to: AppliesTo | None = None  # none: every feature
    auto_topup: AutoTopup | None = None
    alerts: Annotated[tuple[Alert, ...], msgspec.Meta(max_length=20)] = ()

    def __post_init__(self) -> None:
        try:
            minor_unit(self.currency)
        except ValueError as error:
            raise ValueError(f"currency: {error}") from None
        _positive("conversion_rate", self.conversion_rate)
        _positive("topup_conversion_rate", self.topup_conversion_rate)
        if self.overdraft_limit is not None and self.overdraft_limit < 0:
            raise ValueError("overdraft_limit: must be 0 or more")

    @property
    def overdraft(self) -> Decimal:
        return self.overdraft_limit or Decimal(0)

    @property
    def price_of_credit(self) -> Decimal:
        return self.topup_conversion_rate if self.topup_conversion_rate is not None else self.conversion_rate


class Recurrence(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Grant the same amount again every `interval`; what is left of the last one rolls over up to
    `rollover_cap` (none: all of it)."""

    interval: Interval
    rollover_cap: Amount | None = None

    def __post_init__(self) -> None:
        if self.rollover_cap is not None and self.rollover_cap < 0:
            raise ValueError("recurrence.rollover_cap: must be 0 or more")


class GrantSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    amount: Amount
    kind: GrantKind
    expires_at: datetime | None = None
    recurrence: Recurrence | None = None

    def __post_init__(self) -> None:
        _positive("amount", self.amount)
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at: give a time zone (e.g. 2026-02-01T00:00:00Z)")


class Grant(msgspec.Struct, kw_only=True):
    id: UUID
    kind: GrantKind
    amount: Decimal
    remaining: Decimal
    expires_at: datetime | None
    number: int  # the order grants were made in


def spending_order(grant: Grant) -> tuple[datetime, int, int]:
    """Earliest expiry first (never last), then promotional before paid, then the oldest."""
    return grant.expires_at or NEVER, 0 if grant.kind == "promotional" else 1, grant.number


class AlreadyCovered(Conflict):
    def __init__(self, through: int, covered: int) -> None:
        super().__init__(f"usage up to position {through} is already debited (up to {covered})")


class Wallet(Aggregate):
    class Created(Aggregate.Created):
        tenant_id: UUID
        spec: WalletSpec

    class Granted(Aggregate.Event):
        grant_id: UUID
        spec: GrantSpec

    class Debited(Aggregate.Event):
        through: int  # the last usage position this debit covers
        amount: Decimal  # credits taken: from grants, then overdraft
        taken: list  # [[grant id (hex), credits], ...] in the order taken

    class Expired(Aggregate.Event):
        grant_id: UUID
        amount: Decimal

    @event(Created)
    def __init__(self, tenant_id: UUID, spec: WalletSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
        self.grants: list[Grant] = []
        self.overdraft = Decimal(0)  # credits spent beyond the grants, to be paid back by the next grant
        self.through = 0

    @property
    def customer(self) -> str:
        return self.spec.customer

    @property
    def balance(self) -> Decimal:
        return sum((g.remaining for g in self.grants), Decimal(0)) - self.overdraft

    @property
    def available(self) -> Decimal:
        """What can still be spent: the balance plus the overdraft left."""
        return self.balance + self.spec.overdraft

    def room(self, now: datetime) -> Decimal:
        """Credits it can still give at `now`: what its live grants hold, and the overdraft left."""
        live = sum((g.remaining for g in self._live(now)), Decimal(0))
        return max(live + self.spec.overdraft - self.overdraft, Decimal(0))

    def grant(self, spec: GrantSpec) -> UUID:
        grant_id = uuid5(self.id, f"grant:{len(self.grants) + 1}")
        self._granted(grant_id, spec)
        return grant_id

    @event(Granted)
    def _granted(self, grant_id: UUID, spec: GrantSpec) -> None:
        repaid = min(self.overdraft, spec.amount)
        self.overdraft -= repaid
        self.grants.append(Grant(id=grant_id, kind=spec.kind, amount=spec.amount, remaining=spec.amount - repaid,
                                 expires_at=spec.expires_at, number=len(self.grants) + 1))

    def debit(self, credits: Decimal, through: int, now: datetime) -> Decimal:
        """Spend up to `credits` (what is available at `now`: expired grants are not), for the usage
        up to position `through`. Returns what could not be covered."""
        if credits < 0:
            raise Invalid("amount", "a debit is not negative")
        if through <= self.through:
            raise AlreadyCovered(through, self.through)
        taken, left = [], credits
        for grant in sorted(self._live(now), key=spending_order):
            if left <= 0:
                break
            part = min(grant.remaining, left)
            if part > 0:
                taken.append([grant.id.hex, part])
                left -= part
        overdraft = min(left, self.spec.overdraft - self.overdraft)
        self._debited(through, credits - left + overdraft, taken)
        return left - overdraft

    @event(Debited)
    def _debited(self, through: int, amount: Decimal, taken: list) -> None:
        by_id = {grant.id.hex: grant for grant in self.grants}
        for grant_id, part in taken:
            by_id[grant_id].remaining -= Decimal(part)
        self.overdraft += amount - sum((Decimal(part) for _, part in taken), Decimal(0))
        self.through = through

    def expire(self, now: datetime) -> int:
        """Expire what is left of every grant whose time has come; how many expired."""
        due = [g for g in self.grants if g.expires_at is not None and g.expires_at <= now and g.remaining > 0]
        for grant in due:
            self._expired(grant.id, grant.remaining)
        return len(due)

    @event(Expired)
    def _expired(self, grant_id: UUID, amount: Decimal) -> None:
        found = next(g for g in self.grants if g.id == grant_id)
        found.remaining -= amount

    def _live(self, now: datetime) -> list[Grant]:
        return [g for g in self.grants if g.remaining > 0 and (g.expires_at is None or g.expires_at > now)]
