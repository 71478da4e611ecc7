"""The wallets' use cases: open a wallet for a customer, grant credits, expire what is due."""

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from domain.aggregate import Actor, acting
from domain.application import TallyApplication
from domain.charges import ZERO, UsageCharges, allocate
from domain.customer import Customer
from domain.errors import Conflict, Invalid
from domain.feature import Feature
from domain.wallet import GrantSpec, Wallet, WalletSpec

PENDING = Actor("system:pending")  # debits a read works out, never saved


class ChangedMeanwhile(Conflict):
    def __init__(self) -> None:
        super().__init__("the wallet changed at the same time; read it again and retry")


class Wallets(TallyApplication):
    # a wallet and a customer's charges gain an event per usage batch: read from a snapshot, not replayed whole
    snapshotting_intervals = {Wallet: 100, UsageCharges: 100}  # noqa: RUF012 (eventsourcing's class setting)

    def create(self, by: Actor, tenant_id: UUID, spec: WalletSpec) -> Wallet:
        customer = self.find(Customer.id_for(tenant_id, spec.customer))
        if customer is None:
            raise Invalid("customer", f"no customer {spec.customer!r}")
        if spec.currency != customer.currency:
            raise Invalid("currency", f"customer {spec.customer!r} is invoiced in {customer.currency}: its wallets "
                                      f"are worth {customer.currency} too, not {spec.currency}")
        for n, code in enumerate(spec.applies_to.features if spec.applies_to else ()):
            self._metered(tenant_id, code, f"applies_to.features[{n}]")
        for n, alert in enumerate(spec.alerts):
            if alert.feature_code is not None:
                self._metered(tenant_id, alert.feature_code, f"alerts[{n}].feature_code")
                if not spec.pays_for(alert.feature_code):
                    raise Invalid(f"alerts[{n}].feature_code", f"the wallet does not pay for {alert.feature_code!r}")
        with acting(by):
            wallet = Wallet(tenant_id=tenant_id, spec=spec)
        self.save(wallet)
        return wallet

    def _metered(self, tenant_id: UUID, code: str, field: str) -> None:
        feature = self.find(Feature.id_for(tenant_id, code))
        if feature is None or feature.spec.meter_code is None:
            raise Invalid(field, f"no metered feature {code!r}: a wallet pays for the usage of metered features")

    def grant(self, by: Actor, tenant_id: UUID, wallet_id: UUID, spec: GrantSpec, now: datetime) -> Wallet:
        if spec.expires_at is not None and spec.expires_at <= now:
            raise Invalid("expires_at", f"{spec.expires_at.isoformat()} has passed: a grant must expire later")
        wallet = self.wallet(tenant_id, wallet_id)
        with acting(by):
            wallet.grant(spec, now)
        self.save_or(ChangedMeanwhile(), wallet)
        return wallet

    def expire(self, by: Actor, tenant_id: UUID, wallet_id: UUID, now: datetime) -> int:
        """Record the expiry of what is left of each grant whose time has come, and grant the next of
        each recurring series that is due; how many changed. ChangedMeanwhile when the wallet moved
        on meanwhile (nothing saved: try again)."""
        wallet = self.wallet(tenant_id, wallet_id)
        with acting(by):
            changed = wallet.expire(now) + wallet.renew(now)
        if changed:
            self.save_or(ChangedMeanwhile(), wallet)
        return changed

    def charge(self, by: Actor, tenant_id: UUID, customer: str, charges: UsageCharges | None,
               wallets: Sequence[Wallet], through: int, costs: dict[str, Decimal], feature_meters: dict[str, str],
               now: datetime) -> list[Any]:
        """One customer's part of a batch: record on its `charges` (none yet: made here) what its usage up
        to `through` costs (`costs`: fiat so far, by charge key) and debit its wallets (in spending
        order) for what that adds. Answers the aggregates changed, unsaved (the caller saves a batch's
        together); none when that usage was charged already."""
        if charges is not None and through <= charges.through:
            return []
        with acting(by):
            if charges is None:
                charges = UsageCharges(tenant_id=tenant_id, customer=customer)
            changes = charges.changes(costs)
            taken, paid = allocate({key: change for key, change in changes.items() if change > 0}, wallets,
                                   feature_meters, now)
            refunds = charges.refunds({key: -change for key, change in changes.items() if change < 0})
            charges.charge(through, changes, {**paid, **{key: {wallet: -amount for wallet, amount in by.items()}
                                                         for key, by in refunds.items()}})
            given: dict[str, Decimal] = {}
            for by in refunds.values():
                for wallet_hex, amount in by.items():
                    given[wallet_hex] = given.get(wallet_hex, ZERO) + amount
            touched = []
            for wallet in wallets:
                if taken.get(wallet.id):
                    wallet.debit(taken[wallet.id], through, now)
                if given.get(wallet.id.hex):
                    wallet.reverse(given[wallet.id.hex] / wallet.spec.conversion_rate, through, now)
                if taken.get(wallet.id) or given.get(wallet.id.hex):
                    touched.append(wallet)
        return [charges, *touched]

    def pending(self, tenant_id: UUID, customer: str, wallets: Sequence[Wallet], costs: dict[str, Decimal],
                feature_meters: dict[str, str], now: datetime) -> None:
        """Debit these wallets (copies, never saved) for what the usage costs beyond what was charged:
        a balance read counts usage the debits have not reached yet."""
        charges = self.find(UsageCharges.create_id(tenant_id, customer))
        changes = charges.changes(costs) if charges is not None else costs
        taken, _ = allocate({key: change for key, change in changes.items() if change > 0}, wallets,
                            feature_meters, now)
        with acting(PENDING):
            for wallet in wallets:
                if taken.get(wallet.id):
                    wallet.debit(taken[wallet.id], max(wallet.through, charges.through if charges else 0) + 1, now)

    def wallet(self, tenant_id: UUID, wallet_id: UUID) -> Wallet:
        return self.owned(Wallet, tenant_id, wallet_id, "wallet")
