"""Wallets as the API shows them: the balance and each grant's remaining credits, and the wallet's
transactions (every grant, debit, expiry, top-up landed and reversal), read from the wallet's own events.

Pure: a view of a wallet aggregate (now, or as it stood at any moment: `as_of` replays its events
up to then), and the transactions of its events.
"""

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from domain.money import Amount
from domain.wallet import Alert, AppliesTo, AutoTopup, Wallet
from projections.views import View, public_id


class GrantView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    amount: Amount
    remaining: Amount
    expires_at: datetime | None


class TopUpView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    amount: Amount  # credits
    status: str  # pending (its invoice unpaid) | landed | void
    invoice_id: str
    auto: bool  # asked for by the wallet's auto_topup


class WalletView(View, frozen=True, kw_only=True):
    customer: str
    name: str
    credit_unit: str
    currency: str
    conversion_rate: Amount
    topup_conversion_rate: Amount
    priority: int
    overdraft_limit: Amount
    applies_to: AppliesTo | None
    pooled: bool
    auto_topup: AutoTopup | None
    alerts: tuple[Alert, ...]
    balance: Amount  # credits: granted - spent - expired (below zero only by the overdraft)
    grants: tuple[GrantView, ...]
    topups: tuple[TopUpView, ...]
    usage_through: int  # the last usage-log position debited
    updated_at: datetime


class TransactionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    type: str  # grant | debit | expiry | topup | reversal
    amount: Amount  # credits: + in, - out
    balance: Amount  # after it
    grant_id: str | None = None
    kind: str | None = None  # a grant's
    expires_at: datetime | None = None  # a grant's
    usage_through: int | None = None  # a debit's: the last usage position it covers
    created_at: datetime
    created_by: str


def grant_id(value: Any) -> str:
    return public_id("grants", value)


def view(wallet: Wallet) -> WalletView:
    spec = wallet.spec
    return WalletView(
        id=public_id("wallets", wallet.id), created_at=wallet.created_on, customer=spec.customer, name=spec.name,
        credit_unit=spec.credit_unit, currency=spec.currency, conversion_rate=spec.conversion_rate,
        topup_conversion_rate=Amount(spec.price_of_credit), priority=spec.priority,
        overdraft_limit=Amount(spec.overdraft), applies_to=spec.applies_to, pooled=spec.pooled,
        auto_topup=spec.auto_topup,
        alerts=spec.alerts, balance=Amount(wallet.balance),
        grants=tuple(GrantView(id=grant_id(g.id), kind=g.kind, amount=Amount(g.amount), remaining=Amount(g.remaining),
                               expires_at=g.expires_at) for g in wallet.grants),
        topups=tuple(TopUpView(id=public_id("topups", t.id), amount=Amount(t.amount), status=t.status,
                               invoice_id=public_id("invoices", t.invoice_id), auto=t.auto) for t in wallet.topups),
        usage_through=wallet.through, updated_at=wallet.modified_on,
    )


def transactions(events: Iterable[Any], balance: Decimal) -> list[TransactionView]:
    """Each change of the wallet's balance the events make, in order, with the balance after it
    (`balance`: before the first of them)."""
    found = []
    for event in events:
        common = {"id": f"wtx_{event.originator_id.hex}_{event.originator_version}", "created_at": event.timestamp,
                  "created_by": event.actor}
        match event:
            case Wallet.Granted(spec=spec):
                balance += spec.amount
                found.append(TransactionView(type="grant", amount=Amount(spec.amount), balance=Amount(balance),
                                             grant_id=grant_id(event.grant_id), kind=spec.kind,
                                             expires_at=spec.expires_at, **common))
            case Wallet.Renewed():
                balance += event.amount
                found.append(TransactionView(type="grant", amount=Amount(event.amount), balance=Amount(balance),
                                             grant_id=grant_id(event.new_grant_id), **common))
            case Wallet.Debited():
                balance -= event.amount
                found.append(TransactionView(type="debit", amount=Amount(-event.amount), balance=Amount(balance),
                                             usage_through=event.through, **common))
            case Wallet.TopUpLanded():
                balance += event.amount
                found.append(TransactionView(type="topup", amount=Amount(event.amount), balance=Amount(balance),
                                             grant_id=grant_id(event.grant_id), kind="paid", **common))
            case Wallet.Reversed():
                balance += event.amount
                found.append(TransactionView(type="reversal", amount=Amount(event.amount), balance=Amount(balance),
                                             usage_through=event.through, **common))
            case Wallet.Expired():
                balance -= event.amount
                found.append(TransactionView(type="expiry", amount=Amount(-event.amount), balance=Amount(balance),
                                             grant_id=grant_id(event.grant_id), **common))
    return found
