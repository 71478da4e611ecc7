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
from domain.periods import Interval, advance

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
    pooled: bool = False  # the customer's children may draw on it once their own wallets run out
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

    def pays_for(self, feature_code: str) -> bool:
        return self.applies_to is None or feature_code in self.applies_to.features

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
        if self.expires_at is not None and self.recurrence is not None:
            raise ValueError("expires_at: a recurring grant does not expire; its recurrence.rollover_cap limits "
                             "what is left of it when the next one comes")


class TopUpSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    amount: Amount  # credits to buy

    def __post_init__(self) -> None:
        _positive("amount", self.amount)


class Grant(msgspec.Struct, kw_only=True):
    id: UUID
    kind: GrantKind
    amount: Decimal
    remaining: Decimal
    expires_at: datetime | None
    number: int  # the order grants were made in
    recurrence: Recurrence | None = None
    series_start: datetime | None = None  # a recurring grant's: when the first of its series was made
    series_index: int = 0  # which of its series it is (0: the first)
    renewed: bool = False  # the next of its series was granted

    @property
    def next_at(self) -> datetime | None:
        if self.recurrence is None or self.series_start is None or self.renewed:
            return None
        return advance(self.series_start, self.recurrence.interval, self.series_index + 1)


class TopUp(msgspec.Struct, kw_only=True):
    id: UUID
    amount: Decimal  # credits
    invoice_id: UUID
    status: Literal["pending", "landed", "void"]
    auto: bool


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
        at: datetime  # when it was made (a recurring one comes again an interval later)

    class Renewed(Aggregate.Event):  # the next grant of a recurring series
        grant_id: UUID  # the one it follows
        new_grant_id: UUID
        amount: Decimal
        next_at: datetime  # when the one after it comes

    class Debited(Aggregate.Event):
        through: int  # the last usage position this debit covers
        amount: Decimal  # credits taken: from grants, then overdraft
        taken: list  # [[grant id (hex), credits], ...] in the order taken

    class Expired(Aggregate.Event):
        grant_id: UUID
        amount: Decimal

    class Reversed(Aggregate.Event):  # credits given back: the usage they paid for was voided
        through: int
        amount: Decimal
        restored: list  # [[grant id (hex), credits], ...] given back to live grants (after the overdraft)
        grant_id: UUID | None  # a new paid grant for what neither the overdraft nor a grant could take back

    class TopUpRequested(Aggregate.Event):
        topup_id: UUID
        amount: Decimal
        invoice_id: UUID
        auto: bool

    class TopUpLanded(Aggregate.Event):  # wallet.topped_up: its invoice is paid, the credits are a paid grant
        topup_id: UUID
        grant_id: UUID
        amount: Decimal

    class TopUpVoided(Aggregate.Event):
        topup_id: UUID

    class BalanceLow(Aggregate.Event):  # wallet.balance_low: once per downward crossing of an alert's level
        level: str
        below: Decimal
        balance: Decimal
        feature_code: str | None

    @event(Created)
    def __init__(self, tenant_id: UUID, spec: WalletSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
        self.grants: list[Grant] = []
        self.overdraft = Decimal(0)  # credits spent beyond the grants, to be paid back by the next grant
        self.through = 0
        self.topups: list[TopUp] = []
        self.low: set[int] = set()  # the alerts fired and not re-armed yet (the balance has not risen back)
        self.topup_armed = True  # an auto top-up may be asked for (once per crossing of its level)

    @property
    def customer(self) -> str:
        return self.spec.customer

    @property
    def balance(self) -> Decimal:
        return sum((g.remaining for g in self.grants), Decimal(0)) - self.overdraft

    def room(self, now: datetime) -> Decimal:
        """Credits it can still give at `now`: what its live grants hold, and the overdraft left."""
        live = sum((g.remaining for g in self._live(now)), Decimal(0))
        return max(live + self.spec.overdraft - self.overdraft, Decimal(0))

    def grant(self, spec: GrantSpec, now: datetime) -> UUID:
        grant_id = uuid5(self.id, f"grant:{len(self.grants) + 1}")
        self._granted(grant_id, spec, now)
        return grant_id

    @event(Granted)
    def _granted(self, grant_id: UUID, spec: GrantSpec, at: datetime) -> None:
        self._add(Grant(id=grant_id, kind=spec.kind, amount=Decimal(spec.amount), remaining=Decimal(spec.amount),
                        expires_at=spec.expires_at, number=len(self.grants) + 1, recurrence=spec.recurrence,
                        series_start=at if spec.recurrence else None))

    def renew(self, now: datetime) -> int:
        """Grant the next of each recurring series whose time has come (all of them, if several were
        missed): what is left of the one before rolls over up to its rollover_cap, the rest expires.
        Returns how many were granted."""
        made = 0
        while due := [g for g in self.grants if g.next_at is not None and g.next_at <= now]:
            for grant in due:
                cap = grant.recurrence.rollover_cap if grant.recurrence else None
                if cap is not None and grant.remaining > cap:
                    self._expired(grant.id, grant.remaining - cap)
                assert grant.recurrence is not None and grant.series_start is not None
                self._renewed(grant.id, uuid5(self.id, f"grant:{len(self.grants) + 1}"), grant.amount,
                              advance(grant.series_start, grant.recurrence.interval, grant.series_index + 2))
                made += 1
        if made:
            self.check_alerts()
        return made

    @event(Renewed)
    def _renewed(self, grant_id: UUID, new_grant_id: UUID, amount: Decimal, next_at: datetime) -> None:
        old = next(g for g in self.grants if g.id == grant_id)
        old.renewed = True
        self._add(Grant(id=new_grant_id, kind=old.kind, amount=amount, remaining=amount, expires_at=None,
                        number=len(self.grants) + 1, recurrence=old.recurrence, series_start=old.series_start,
                        series_index=old.series_index + 1))

    def _add(self, grant: Grant) -> None:
        """A new grant: it pays back the overdraft first; a balance back above a level re-arms it."""
        repaid = min(self.overdraft, grant.amount)
        self.overdraft -= repaid
        grant.remaining -= repaid
        self.grants.append(grant)
        self._rearm()

    def _rearm(self) -> None:
        """The balance rose: the alerts and the auto top-up whose level it is back at are armed again."""
        balance = self.balance
        self.low = {n for n in self.low if balance < self.spec.alerts[n].below}
        auto = self.spec.auto_topup
        if auto is not None and balance >= auto.below and not self._pending_topup():
            self.topup_armed = True

    def reverse(self, credits: Decimal, through: int, now: datetime) -> None:
        """Give back credits taken for usage a void took out: the overdraft first, then the live
        grants, the last in spending order first, up to what each held; the rest as a new paid grant."""
        if through < self.through:
            raise AlreadyCovered(through, self.through)
        left = credits - min(self.overdraft, credits)
        restored = []
        for grant in sorted(self._live(now), key=spending_order, reverse=True):
            part = min(grant.amount - grant.remaining, left)
            if part > 0:
                restored.append([grant.id.hex, part])
                left -= part
        self._reversed(through, Decimal(credits), restored,
                       uuid5(self.id, f"grant:{len(self.grants) + 1}") if left > 0 else None)

    @event(Reversed)
    def _reversed(self, through: int, amount: Decimal, restored: list, grant_id: UUID | None) -> None:
        back = min(self.overdraft, amount)
        self.overdraft -= back
        by_id = {grant.id.hex: grant for grant in self.grants}
        for grant_hex, part in restored:
            by_id[grant_hex].remaining += Decimal(part)
        rest = amount - back - sum((Decimal(part) for _, part in restored), Decimal(0))
        if grant_id is not None:
            self.grants.append(Grant(id=grant_id, kind="paid", amount=rest, remaining=rest, expires_at=None,
                                     number=len(self.grants) + 1))
        self.through = max(self.through, through)
        self._rearm()

    def request_topup(self, amount: Decimal, invoice_id: UUID, auto: bool = False) -> UUID:
        """Ask for `amount` credits, sold by the invoice `invoice_id`; they land when it is paid."""
        if amount <= 0:
            raise Invalid("amount", "a top-up buys more than 0 credits")
        topup_id = uuid5(self.id, f"topup:{len(self.topups) + 1}")
        self._topup_requested(topup_id, Decimal(amount), invoice_id, auto)  # plain Decimals in events
        return topup_id

    @event(TopUpRequested)
    def _topup_requested(self, topup_id: UUID, amount: Decimal, invoice_id: UUID, auto: bool) -> None:
        self.topups.append(TopUp(id=topup_id, amount=amount, invoice_id=invoice_id, status="pending", auto=auto))
        if auto:
            self.topup_armed = False

    def land_topup(self, invoice_id: UUID) -> None:
        """The top-up sold by that invoice is paid: its credits become a paid grant (once)."""
        topup = self._topup_of(invoice_id)
        if topup is not None and topup.status == "pending":
            self._topup_landed(topup.id, uuid5(self.id, f"grant:{len(self.grants) + 1}"), topup.amount)

    @event(TopUpLanded)
    def _topup_landed(self, topup_id: UUID, grant_id: UUID, amount: Decimal) -> None:
        next(t for t in self.topups if t.id == topup_id).status = "landed"
        self._add(Grant(id=grant_id, kind="paid", amount=amount, remaining=amount, expires_at=None,
                        number=len(self.grants) + 1))

    def void_topup(self, invoice_id: UUID) -> None:
        """The invoice of a pending top-up is voided: the top-up never lands."""
        topup = self._topup_of(invoice_id)
        if topup is not None and topup.status == "pending":
            self._topup_voided(topup.id)

    @event(TopUpVoided)
    def _topup_voided(self, topup_id: UUID) -> None:
        next(t for t in self.topups if t.id == topup_id).status = "void"
        self.topup_armed = True

    def _topup_of(self, invoice_id: UUID) -> TopUp | None:
        return next((t for t in self.topups if t.invoice_id == invoice_id), None)

    def _pending_topup(self) -> bool:
        return any(t.status == "pending" and t.auto for t in self.topups)

    def wants_topup(self) -> Decimal | None:
        """The credits an auto top-up should buy now: once per crossing below its level."""
        auto = self.spec.auto_topup
        if auto is None or not self.topup_armed or self.balance >= auto.below:
            return None
        return auto.amount

    def check_alerts(self) -> None:
        """Fire each alert whose level the balance is below now, once until the balance rises back."""
        balance = self.balance
        for n, alert in enumerate(self.spec.alerts):
            if n not in self.low and balance < alert.below:
                self._balance_low(alert.level, Decimal(alert.below), balance, alert.feature_code)

    @event(BalanceLow)
    def _balance_low(self, level: str, below: Decimal, balance: Decimal, feature_code: str | None) -> None:
        index = next(n for n, a in enumerate(self.spec.alerts) if (a.level, a.below, a.feature_code) ==
                     (level, below, feature_code) and n not in self.low)
        self.low.add(index)

    def debit(self, credits: Decimal, through: int, now: datetime) -> Decimal:
        """Spend up to `credits` (what is available at `now`: expired grants are not), for the usage
        up to position `through`. Returns what could not be covered."""
        if credits < 0:
            raise Invalid("amount", "a debit is not negative")
        if through < self.through:  # equal: another child drawing on a pooled wallet in the same batch
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
        self.check_alerts()
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
        if due:
            self.check_alerts()
        return len(due)

    @event(Expired)
    def _expired(self, grant_id: UUID, amount: Decimal) -> None:
        found = next(g for g in self.grants if g.id == grant_id)
        found.remaining -= amount

    def _live(self, now: datetime) -> list[Grant]:
        return [g for g in self.grants if g.remaining > 0 and (g.expires_at is None or g.expires_at > now)]
