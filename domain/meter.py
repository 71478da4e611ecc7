"""A meter: how raw usage events of one name become a quantity."""

from typing import Annotated, Literal
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, Name, Property

Aggregation = Literal["count", "sum", "max", "unique_count", "latest", "weighted_sum"]


class MeterSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`latest`: the last event's value by event time (ties: record order). `weighted_sum`: the
    property is a level held until the next event; Σ level x time held / period length."""

    code: Code
    name: Name
    event_name: Name
    aggregation: Aggregation
    field: Property | None = None
    filters: dict[Property, Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]] = {}
    group_by: Annotated[tuple[Property, ...], msgspec.Meta(max_length=5)] = ()

    def __post_init__(self) -> None:
        if self.aggregation == "count" and self.field is not None:
            raise ValueError("field: a count meter counts events and takes no field")
        if self.aggregation != "count" and self.field is None:
            raise ValueError(f"field: a {self.aggregation} meter needs the property it aggregates")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError("group_by: a property is named twice")


class Meter(Aggregate):
    class Defined(Aggregate.Created):
        tenant_id: UUID
        spec: MeterSpec

    @staticmethod
    def id_for(tenant_id: UUID, code: str) -> UUID:
        return uuid5(tenant_id, f"meter:{code}")

    @staticmethod
    def create_id(tenant_id: UUID, spec: MeterSpec) -> UUID:
        return Meter.id_for(tenant_id, spec.code)

    @event(Defined)
    def __init__(self, tenant_id: UUID, spec: MeterSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
