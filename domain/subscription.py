"""A subscription: a customer on a plan version, billed over periods from its billing start.

Every change is an event: started, amended (a new contract version, effective at a given time),
cancelled. The version in force at any instant is the last one effective at or before it. The
billing start is `start_at` plus the trial: nothing is billed before it.
"""

from datetime import datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, ExternalId
from domain.errors import Conflict, Invalid
from domain.periods import Anchor, Interval, Period, period_at

Moment = Annotated[datetime, msgspec.Meta(tz=True)]
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
VersionNumber = Annotated[int, msgspec.Meta(ge=1)]
TrialDays = Annotated[int, msgspec.Meta(ge=0, le=3650)]


class SubscriptionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    customer: ExternalId
    plan_code: Code
    plan_version: VersionNumber | None = None  # none: the plan's latest version
    start_at: Moment
    billing_anchor: Anchor
    trial_days: TrialDays | None = None  # none: the plan version's trial_days, else no trial


class Changes(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    plan_version: VersionNumber


class AmendmentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    effective_at: Moment | None = None  # none: now
    reason: Reason
    changes: Changes


class Cancellation(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    at: Literal["now", "period_end"]
    reason: Reason | None = None


class Cancelled(Conflict):
    def __init__(self, ends_at: datetime) -> None:
        super().__init__(f"the subscription is cancelled: it ends at {ends_at.isoformat()}")


class Subscription(Aggregate):
    class Started(Aggregate.Created):
        tenant_id: UUID
        customer: str
        plan_code: str
        plan_version: int
        currency: str
        interval: Interval
        start_at: datetime
        billing_anchor: Anchor
        trial_days: int

    class Amended(Aggregate.Event):
        effective_at: datetime
        reason: str
        plan_version: int

    class CancelRequested(Aggregate.Event):
        at: str
        ends_at: datetime
        reason: str | None

    @event(Started)
    def __init__(self, tenant_id: UUID, customer: str, plan_code: str, plan_version: int, currency: str,
                 interval: Interval, start_at: datetime, billing_anchor: Anchor, trial_days: int) -> None:
        self.tenant_id, self.customer, self.plan_code, self.currency = tenant_id, customer, plan_code, currency
        self.interval, self.start_at, self.billing_anchor = interval, start_at, billing_anchor
        self.billing_start = start_at + timedelta(days=trial_days)
        self.versions: list[tuple[datetime, int]] = [(start_at, plan_version)]  # (effective at, plan version)
        self.ends_at: datetime | None = None

    def version_at(self, moment: datetime) -> int:
        """The plan version in force at `moment` (the first one before the start)."""
        return next((number for since, number in reversed(self.versions) if since <= moment), self.versions[0][1])

    def period_at(self, moment: datetime) -> Period:
        """The billing period holding `moment` (at or after the billing start)."""
        return period_at(self.billing_start, self.interval, self.billing_anchor, moment)

    def amend(self, effective_at: datetime, reason: str, plan_version: int) -> None:
        if self.ends_at is not None:
            raise Cancelled(self.ends_at)
        if effective_at < self.start_at:
            raise Invalid("effective_at", f"before the subscription starts ({self.start_at.isoformat()})")
        latest = self.versions[-1][0]
        if effective_at < latest:
            raise Invalid("effective_at", f"the contract changed last at {latest.isoformat()}: a change takes "
                                          "effect after that")
        if plan_version == self.version_at(effective_at):
            raise Invalid("changes.plan_version", f"the subscription is on version {plan_version} already")
        self._amended(effective_at, reason, plan_version)

    @event(Amended)
    def _amended(self, effective_at: datetime, reason: str, plan_version: int) -> None:
        self.versions.append((effective_at, plan_version))

    def cancel(self, at: Literal["now", "period_end"], now: datetime, reason: str | None) -> None:
        if self.ends_at is not None:
            raise Cancelled(self.ends_at)
        if at == "now" or now < self.billing_start:  # not billed yet: it ends now, or at its start
            ends_at = max(now, self.start_at) if at == "now" else self.billing_start
        else:
            ends_at = self.period_at(now).end
        self._cancel_requested(at, ends_at, reason)

    @event(CancelRequested)
    def _cancel_requested(self, at: str, ends_at: datetime, reason: str | None) -> None:
        self.ends_at = ends_at

