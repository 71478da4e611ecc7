"""The subscriptions' use cases: start, amend (a new contract version), cancel.

Time comes from `clock`, injectable: tests and the billing clock pass their own.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

from domain.aggregate import Actor, acting
from domain.application import TallyApplication
from domain.customer import Customer
from domain.errors import Conflict, Invalid
from domain.plan import Plan
from domain.plan_version import PlanVersion
from domain.subscription import (
    AmendmentSpec,
    Cancellation,
    Subscription,
    SubscriptionSpec,
)


class ChangedMeanwhile(Conflict):
    def __init__(self) -> None:
        super().__init__("the subscription changed at the same time; read it again and retry")


def utc_now() -> datetime:
    return datetime.now(UTC)


class Subscriptions(TallyApplication):
    clock: Callable[[], datetime] = staticmethod(utc_now)

    def start(self, by: Actor, tenant_id: UUID, spec: SubscriptionSpec) -> Subscription:
        customer = self.find(Customer.id_for(tenant_id, spec.customer))
        if customer is None:
            raise Invalid("customer", f"no customer {spec.customer!r}")
        plan = self.find(Plan.id_for(tenant_id, spec.plan_code))
        if plan is None:
            raise Invalid("plan_code", f"no plan {spec.plan_code!r}")
        if plan.spec.currency != customer.currency:
            raise Invalid("plan_code", f"plan {spec.plan_code!r} bills in {plan.spec.currency}, customer "
                                       f"{spec.customer!r} in {customer.currency}")
        version = self._version(plan, spec.plan_version or plan.latest_version, "plan_version")
        trial_days = spec.trial_days if spec.trial_days is not None else version.spec.trial_days or 0
        with acting(by):
            subscription = Subscription(
                tenant_id=tenant_id, customer=spec.customer, plan_code=spec.plan_code,
                plan_version=version.number, currency=plan.spec.currency, interval=plan.spec.interval,
                start_at=spec.start_at.astimezone(UTC), billing_anchor=spec.billing_anchor, trial_days=trial_days,
            )
        self.save(subscription)
        return subscription

    def amend(self, by: Actor, tenant_id: UUID, subscription_id: UUID, amendment: AmendmentSpec) -> Subscription:
        subscription = self.subscription(tenant_id, subscription_id)
        plan = self.find(Plan.id_for(tenant_id, subscription.plan_code))
        assert plan is not None, "a plan is never removed"
        version = self._version(plan, amendment.changes.plan_version, "changes.plan_version")
        now = self.clock()
        effective_at = now if amendment.effective_at is None else amendment.effective_at.astimezone(UTC)
        with acting(by):
            subscription.amend(effective_at, amendment.reason, version.number)
        self.save_or(ChangedMeanwhile(), subscription)
        return subscription

    def cancel(self, by: Actor, tenant_id: UUID, subscription_id: UUID, cancellation: Cancellation) -> Subscription:
        subscription = self.subscription(tenant_id, subscription_id)
        with acting(by):
            subscription.cancel(cancellation.at, self.clock(), cancellation.reason)
        self.save_or(ChangedMeanwhile(), subscription)
        return subscription

    def subscription(self, tenant_id: UUID, subscription_id: UUID) -> Subscription:
        return self.owned(Subscription, tenant_id, subscription_id, "subscription")

    def _version(self, plan: Plan, number: int, field: str) -> PlanVersion:
        version = self.find(PlanVersion.create_id(plan.id, number)) if number else None
        if version is None:
            raise Invalid(field, f"plan {plan.spec.code!r} has no version {number}" if number else
                          f"plan {plan.spec.code!r} has no version yet: publish one first")
        return version
