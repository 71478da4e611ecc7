"""A customer's entitlements apart from its plan: overrides, and the crossings of its limits.

An override sets a feature's limit, switch or value for the customer, for good or until a time.
Each is an event (who, when, what), so the audit shows them all; the latest one in force for a
feature wins, and when it runs out the plan's grant returns.

A crossing (`entitlement.exceeded`) is recorded the first time a check asks for more of a metered
feature than its limit allows, once per limit per reset window: whether the check was allowed (up
to a soft limit) or denied, and the use and limit then.
"""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code
from domain.money import Amount
from domain.price import Entitlement

NAMESPACE = UUID("0d3c1f7e-5a0b-4e0e-8f4e-6a2b9d7c1e55")


class OverrideSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    feature_code: Code
    limit: Amount | None = None  # a metered feature's
    enabled: bool | None = None  # a boolean feature's
    value: str | None = None  # a config feature's
    until: datetime | None = None  # none: until another override

    def __post_init__(self) -> None:
        if sum(field is not None for field in (self.limit, self.enabled, self.value)) != 1:
            raise ValueError("limit: give exactly one of limit, enabled and value")
        if self.limit is not None and self.limit < 0:
            raise ValueError("limit: must be 0 or more")
        if self.until is not None and self.until.tzinfo is None:
            raise ValueError("until: give a time zone (e.g. 2026-02-01T00:00:00Z)")


class CustomerEntitlements(Aggregate):
    class Opened(Aggregate.Created):
        tenant_id: UUID
        customer: str

    class Overridden(Aggregate.Event):
        spec: OverrideSpec

    class Exceeded(Aggregate.Event):  # entitlement.exceeded
        feature_code: str
        window_start: datetime
        resets_at: datetime | None
        limit: Decimal
        used: Decimal  # in the window before the check
        quantity: Decimal  # asked for
        allowed: bool  # up to a soft limit

    @staticmethod
    def create_id(tenant_id: UUID, customer: str) -> UUID:
        return uuid5(NAMESPACE, f"{tenant_id}/{customer}")

    @event(Opened)
    def __init__(self, tenant_id: UUID, customer: str) -> None:
        self.tenant_id, self.customer = tenant_id, customer
        self.overrides: list[OverrideSpec] = []
        self.crossings: set[tuple[str, datetime, Decimal]] = set()  # feature, window start, limit

    def override(self, spec: OverrideSpec) -> None:
        self._overridden(spec)

    @event(Overridden)
    def _overridden(self, spec: OverrideSpec) -> None:
        self.overrides.append(spec)

    def exceed(self, feature_code: str, window_start: datetime, resets_at: datetime | None, limit: Decimal,
               used: Decimal, quantity: Decimal, allowed: bool) -> None:
        """Record the crossing of the limit, unless this window saw it crossed already."""
        if not self.crossed(feature_code, window_start, limit):
            self._exceeded(feature_code=feature_code, window_start=window_start, resets_at=resets_at,
                           limit=Decimal(limit), used=Decimal(used), quantity=Decimal(quantity), allowed=allowed)

    @event(Exceeded)
    def _exceeded(self, feature_code: str, window_start: datetime, resets_at: datetime | None, limit: Decimal,
                  used: Decimal, quantity: Decimal, allowed: bool) -> None:
        self.crossings.add((feature_code, window_start, limit))

    def crossed(self, feature_code: str, window_start: datetime, limit: Decimal) -> bool:
        return (feature_code, window_start, Decimal(limit)) in self.crossings

    def in_force(self, feature_code: str, now: datetime) -> OverrideSpec | None:
        """The latest override of the feature still in force at `now`."""
        return next((o for o in reversed(self.overrides) if o.feature_code == feature_code
                     and (o.until is None or now < o.until)), None)


def applied(plan: Entitlement | None, override: OverrideSpec | None) -> Entitlement | None:
    """The entitlement in force: the plan's, with an override's limit, switch or value instead (an
    overridden limit keeps the plan's reset window, never if the plan has none, and no soft limit;
    the plan's wallet gate stays)."""
    if override is None:
        return plan
    given: dict[str, Any] = {"limit": override.limit, "enabled": override.enabled, "value": override.value}
    return Entitlement(feature_code=override.feature_code, reset=plan.reset if plan is not None else "never",
                       wallet_gated=plan is not None and plan.wallet_gated, **given)
