"""Entitlement overrides: per customer, a feature's limit, switch or value set apart from its plan,
for good or until a time. Each override is an event (who, when, what), so the audit shows them all;
the latest one in force for a feature wins, and when it runs out the plan's grant returns."""

from datetime import datetime
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


class EntitlementOverrides(Aggregate):
    class Opened(Aggregate.Created):
        tenant_id: UUID
        customer: str

    class Overridden(Aggregate.Event):
        spec: OverrideSpec

    @staticmethod
    def create_id(tenant_id: UUID, customer: str) -> UUID:
        return uuid5(NAMESPACE, f"{tenant_id}/{customer}")

    @event(Opened)
    def __init__(self, tenant_id: UUID, customer: str) -> None:
        self.tenant_id, self.customer = tenant_id, customer
        self.overrides: list[OverrideSpec] = []

    def override(self, spec: OverrideSpec) -> None:
        self._overridden(spec)

    @event(Overridden)
    def _overridden(self, spec: OverrideSpec) -> None:
        self.overrides.append(spec)

    def in_force(self, feature_code: str, now: datetime) -> OverrideSpec | None:
        """The latest override of the feature still in force at `now`."""
        return next((o for o in reversed(self.overrides) if o.feature_code == feature_code
                     and (o.until is None or now < o.until)), None)


def applied(plan: Entitlement | None, override: OverrideSpec | None) -> Entitlement | None:
    """The entitlement in force: the plan's, with an override's limit, switch or value instead (an
    overridden limit keeps the plan's reset window, never if the plan has none, and no soft limit)."""
    if override is None:
        return plan
    given: dict[str, Any] = {"limit": override.limit, "enabled": override.enabled, "value": override.value}
    return Entitlement(feature_code=override.feature_code, reset=plan.reset if plan is not None else "never", **given)
