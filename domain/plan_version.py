"""A plan version: the immutable prices and entitlements of a plan, numbered 1, 2, ...

It has one event and no command after it: once published, a version never changes.
"""

from typing import Annotated
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.money import Amount
from domain.price import Entitlement, Price


class PlanVersionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    prices: Annotated[tuple[Price, ...], msgspec.Meta(max_length=100)]
    entitlements: Annotated[tuple[Entitlement, ...], msgspec.Meta(max_length=200)] = ()
    minimum_commitment: Amount | None = None
    trial_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] | None = None

    def __post_init__(self) -> None:
        if self.minimum_commitment is not None and self.minimum_commitment < 0:
            raise ValueError("minimum_commitment: must not be negative")
        codes = [entitlement.feature_code for entitlement in self.entitlements]
        for index, code in enumerate(codes):
            if code in codes[:index]:
                raise ValueError(f"entitlements[{index}].feature_code: feature {code!r} is granted twice")


class PlanVersion(Aggregate):
    class Published(Aggregate.Created):
        plan_id: UUID
        tenant_id: UUID
        plan_code: str
        number: int
        spec: PlanVersionSpec

    @staticmethod
    def create_id(plan_id: UUID, number: int) -> UUID:
        return uuid5(plan_id, f"version:{number}")

    @event(Published)
    def __init__(self, plan_id: UUID, tenant_id: UUID, plan_code: str, number: int, spec: PlanVersionSpec) -> None:
        self.plan_id, self.tenant_id, self.plan_code = plan_id, tenant_id, plan_code
        self.number, self.spec = number, spec
