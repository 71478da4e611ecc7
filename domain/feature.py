"""A feature: something a plan can grant — a metered allowance, a switch, or a value."""

from typing import Annotated, Literal
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, Name

FeatureType = Literal["metered", "boolean", "config"]


class FeatureSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    code: Code
    name: Name
    type: FeatureType
    meter_code: Code | None = None
    unit: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None

    def __post_init__(self) -> None:
        if self.type == "metered" and self.meter_code is None:
            raise ValueError("meter_code: a metered feature needs the meter that measures it")
        if self.type != "metered" and self.meter_code is not None:
            raise ValueError(f"meter_code: a {self.type} feature has no meter")


class Feature(Aggregate):
    class Defined(Aggregate.Created):
        tenant_id: UUID
        spec: FeatureSpec

    @staticmethod
    def id_for(tenant_id: UUID, code: str) -> UUID:
        return uuid5(tenant_id, f"feature:{code}")

    @staticmethod
    def create_id(tenant_id: UUID, spec: FeatureSpec) -> UUID:
        return Feature.id_for(tenant_id, spec.code)

    @event(Defined)
    def __init__(self, tenant_id: UUID, spec: FeatureSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
