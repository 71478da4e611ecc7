"""The wallets' use cases: open a wallet for a customer, grant credits, expire what is due."""

from datetime import datetime
from uuid import UUID

from domain.aggregate import Actor, acting
from domain.application import TallyApplication
from domain.customer import Customer
from domain.errors import Conflict, Invalid
from domain.wallet import GrantSpec, Wallet, WalletSpec


class ChangedMeanwhile(Conflict):
    def __init__(self) -> None:
        super().__init__("the wallet changed at the same time; read it again and retry")


class Wallets(TallyApplication):
    # a wallet gains an event per debit (one per usage batch): read from a snapshot, not replayed whole
    snapshotting_intervals = {Wallet: 100}  # noqa: RUF012 (eventsourcing's class setting)

    def create(self, by: Actor, tenant_id: UUID, spec: WalletSpec) -> Wallet:
        customer = self.find(Customer.id_for(tenant_id, spec.customer))
        if customer is None:
            raise Invalid("customer", f"no customer {spec.customer!r}")
        if spec.currency != customer.currency:
            raise Invalid("currency", f"customer {spec.customer!r} is invoiced in {customer.currency}: its wallets "
                                      f"are worth {customer.currency} too, not {spec.currency}")
        with acting(by):
            wallet = Wallet(tenant_id=tenant_id, spec=spec)
        self.save(wallet)
        return wallet

    def grant(self, by: Actor, tenant_id: UUID, wallet_id: UUID, spec: GrantSpec, now: datetime) -> Wallet:
        if spec.expires_at is not None and spec.expires_at <= now:
            raise Invalid("expires_at", f"{spec.expires_at.isoformat()} has passed: a grant must expire later")
        wallet = self.wallet(tenant_id, wallet_id)
        with acting(by):
            wallet.grant(spec)
        self.save_or(ChangedMeanwhile(), wallet)
        return wallet

    def expire(self, by: Actor, tenant_id: UUID, wallet_id: UUID, now: datetime) -> int:
        """Record the expiry of what is left of each grant whose time has come; how many expired
        (0 when the wallet changed meanwhile: the next try sees it)."""
        wallet = self.wallet(tenant_id, wallet_id)
        with acting(by):
            expired = wallet.expire(now)
        if expired:
            try:
                self.save_or(ChangedMeanwhile(), wallet)
            except ChangedMeanwhile:
                return 0
        return expired

    def wallet(self, tenant_id: UUID, wallet_id: UUID) -> Wallet:
        return self.owned(Wallet, tenant_id, wallet_id, "wallet")
