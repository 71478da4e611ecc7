"""The catalogue's use cases: meters, features, pricing units, plans and their versions."""

from typing import Any, TypeVar
from uuid import UUID

from domain.aggregate import Actor, acting
from domain.application import TallyApplication
from domain.errors import Conflict, Invalid, NotFound
from domain.feature import Feature, FeatureSpec
from domain.meter import Meter, MeterSpec
from domain.plan import Plan, PlanSpec
from domain.plan_version import PlanVersion, PlanVersionSpec
from domain.price import Entitlement, PercentagePrice, Price
from domain.pricing_unit import PricingUnit, PricingUnitSpec

T = TypeVar("T")
ENTITLEMENT_VALUE = {"metered": "limit", "boolean": "enabled", "config": "value"}


class AlreadyDefined(Conflict):
    def __init__(self, kind: str, code: str) -> None:
        super().__init__(f"a {kind} with code {code!r} already exists")
        self.kind, self.code = kind, code


class VersionRace(Conflict):
    def __init__(self, plan_code: str) -> None:
        super().__init__(f"another version of plan {plan_code!r} was published at the same time; retry")


class Catalogue(TallyApplication):
    def define_meter(self, by: Actor, tenant_id: UUID, spec: MeterSpec) -> Meter:
        return self._define(by, Meter, "meter", tenant_id, spec)

    def define_feature(self, by: Actor, tenant_id: UUID, spec: FeatureSpec) -> Feature:
        if spec.meter_code is not None:
            self._known(Meter, tenant_id, spec.meter_code, "meter_code")
        return self._define(by, Feature, "feature", tenant_id, spec)

    def define_pricing_unit(self, by: Actor, tenant_id: UUID, spec: PricingUnitSpec) -> PricingUnit:
        return self._define(by, PricingUnit, "pricing unit", tenant_id, spec)

    def define_plan(self, by: Actor, tenant_id: UUID, spec: PlanSpec) -> Plan:
        return self._define(by, Plan, "plan", tenant_id, spec)

    def _define(self, by: Actor, kind: type[T], noun: str, tenant_id: UUID, spec: Any) -> T:
        with acting(by):
            entry = kind(tenant_id=tenant_id, spec=spec)
        self.save_or(AlreadyDefined(noun, spec.code), entry)
        return entry

    def publish_plan_version(self, by: Actor, tenant_id: UUID, plan_code: str, spec: PlanVersionSpec) -> PlanVersion:
        plan = self.plan(tenant_id, plan_code)
        for index, price in enumerate(spec.prices):
            self._check_price(tenant_id, plan, price, f"prices[{index}]")
        for index, entitlement in enumerate(spec.entitlements):
            self._check_entitlement(tenant_id, entitlement, f"entitlements[{index}]")
        with acting(by):
            number = plan.publish_version()
            version = PlanVersion(plan_id=plan.id, tenant_id=tenant_id, plan_code=plan_code, number=number, spec=spec)
        self.save_or(VersionRace(plan_code), plan, version)
        return version

    def meter(self, tenant_id: UUID, code: str) -> Meter:
        meter = self.find(Meter.id_for(tenant_id, code))
        if meter is None:
            raise NotFound("meter", code)
        return meter

    def plan(self, tenant_id: UUID, code: str) -> Plan:
        plan = self.find(Plan.id_for(tenant_id, code))
        if plan is None:
            raise NotFound("plan", code)
        return plan

    def plan_version(self, plan: Plan, number: int) -> PlanVersion:
        version = self.find(PlanVersion.create_id(plan.id, number))
        if version is None:
            raise NotFound("plan version", f"{plan.spec.code}/{number}")
        return version

    def pricing_unit(self, tenant_id: UUID, code: str) -> PricingUnit:
        unit = self.find(PricingUnit.id_for(tenant_id, code))
        if unit is None:
            raise NotFound("pricing unit", code)
        return unit

    def _check_price(self, tenant_id: UUID, plan: Plan, price: Price, field: str) -> None:
        currency = price.currency
        if price.pricing_unit is not None:
            unit = self._known(PricingUnit, tenant_id, price.pricing_unit, f"{field}.pricing_unit")
            currency = unit.spec.currency
        if currency != plan.spec.currency:
            raise Invalid(f"{field}.currency", f"is {currency}, but plan {plan.spec.code!r} bills in {plan.spec.currency}")
        if price.meter_code is not None:
            meter = self._known(Meter, tenant_id, price.meter_code, f"{field}.meter_code")
            if isinstance(price, PercentagePrice) and meter.spec.aggregation != "sum":
                raise Invalid(f"{field}.meter_code", f"a percentage is taken of transaction amounts: meter "
                                                     f"{price.meter_code!r} is {meter.spec.aggregation}, not sum")

    def _check_entitlement(self, tenant_id: UUID, entitlement: Entitlement, field: str) -> None:
        feature = self._known(Feature, tenant_id, entitlement.feature_code, f"{field}.feature_code")
        needed = ENTITLEMENT_VALUE[feature.spec.type]
        if getattr(entitlement, needed) is None:
            raise Invalid(f"{field}.{needed}", f"feature {feature.spec.code!r} is {feature.spec.type}: give {needed}")
        if entitlement.soft_limit is not None and feature.spec.type != "metered":
            raise Invalid(f"{field}.soft_limit", "only a metered feature can have a soft limit")

    def _known(self, kind: type, tenant_id: UUID, code: str, field: str):  # noqa: ANN202
        found = self.find(kind.id_for(tenant_id, code))
        if found is None:
            raise Invalid(field, f"no {kind.__name__} with code {code!r}")
        return found
