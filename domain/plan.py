"""A plan: a named, priced offer in one currency and billing interval; its prices live in versions."""

from typing import Literal
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, Name
from domain.money import minor_unit

Interval = Literal["day", "week", "month", "quarter", "year"]


class PlanSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    code: Code
    name: Name
    currency: str
    interval: Interval

    def __post_init__(self) -> None:
        try:
            minor_unit(self.currency)
        except ValueError as error:
            raise ValueError(f"currency: {error}") from None


class Plan(Aggregate):
    class Defined(Aggregate.Created):
        tenant_id: UUID
        spec: PlanSpec

    class VersionPublished(Aggregate.Event):
        number: int

    @staticmethod
    def id_for(tenant_id: UUID, code: str) -> UUID:
        return uuid5(tenant_id, f"plan:{code}")

    @staticmethod
    def create_id(tenant_id: UUID, spec: PlanSpec) -> UUID:
        return Plan.id_for(tenant_id, spec.code)

    @event(Defined)
    def __init__(self, tenant_id: UUID, spec: PlanSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
        self.latest_version = 0

    def publish_version(self) -> int:
        """The next version's number. Two racing publishers both pick it; the second save fails."""
        number = self.latest_version + 1
        self._version_published(number)
        return number

    @event(VersionPublished)
    def _version_published(self, number: int) -> None:
        self.latest_version = number
