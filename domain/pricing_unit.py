"""A pricing unit: a custom unit (credits) with the fiat value of one unit."""

from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import Code, Name
from domain.money import Amount, minor_unit


class PricingUnitSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`conversion_rate`: fiat value of one unit; "0.01" means 1 credit = 0.01 `currency`."""

    code: Code
    name: Name
    currency: str
    conversion_rate: Amount

    def __post_init__(self) -> None:
        try:
            minor_unit(self.currency)
        except ValueError as error:
            raise ValueError(f"currency: {error}") from None
        if self.conversion_rate <= 0:
            raise ValueError("conversion_rate: must be greater than zero")


class PricingUnit(Aggregate):
    class Defined(Aggregate.Created):
        tenant_id: UUID
        spec: PricingUnitSpec

    @staticmethod
    def id_for(tenant_id: UUID, code: str) -> UUID:
        return uuid5(tenant_id, f"pricing-unit:{code}")

    @staticmethod
    def create_id(tenant_id: UUID, spec: PricingUnitSpec) -> UUID:
        return PricingUnit.id_for(tenant_id, spec.code)

    @event(Defined)
    def __init__(self, tenant_id: UUID, spec: PricingUnitSpec) -> None:
        self.tenant_id, self.spec = tenant_id, spec
