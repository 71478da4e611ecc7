"""The read models of the catalogue, tenants, keys and customers, as the API returns them.

Server ids are prefixed strings (`cus_<hex>`); `public_id` and `private_id` convert.
"""

from datetime import datetime
from uuid import UUID

import msgspec

from domain.money import Amount
from domain.price import Entitlement, Price

PREFIXES = {
    "tenants": "ten", "api_keys": "key", "meters": "mtr", "features": "feat", "pricing_units": "pu",
    "plans": "plan", "plan_versions": "pv", "customers": "cus", "subscriptions": "sub",
    "invoices": "inv", "credit_notes": "cn", "wallets": "wal", "grants": "grt", "topups": "tup",
}


def public_id(collection: str, aggregate_id: UUID) -> str:
    return f"{PREFIXES[collection]}_{aggregate_id.hex}"


def private_id(collection: str, text: str) -> UUID | None:
    """The aggregate id behind a public id, or None when `text` is not one of `collection`'s."""
    prefix, _, hex_ = text.partition("_")
    if prefix != PREFIXES[collection] or len(hex_) != 32:
        return None
    try:
        return UUID(hex=hex_)
    except ValueError:
        return None


class View(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created_at: datetime


class TenantView(View, frozen=True, kw_only=True):
    name: str
    legal_name: str | None
    address: str | None
    tax_id: str | None
    default_tax_rate: Amount
    grace_period_hours: int
    invoice_prefix: str
    payment_terms_days: int
    updated_at: datetime


class ApiKeyView(View, frozen=True, kw_only=True):
    role: str
    customer: str | None
    prefix: str
    revoked: bool = False
    revoked_at: datetime | None = None
    created_by: str


class IssuedApiKeyView(ApiKeyView, frozen=True, kw_only=True):
    """The answer to creating a key: the only time its secret is shown."""

    key: str


class MeterView(View, frozen=True, kw_only=True):
    code: str
    name: str
    event_name: str
    aggregation: str
    field: str | None
    filters: dict[str, list[str]]
    group_by: tuple[str, ...]


class FeatureView(View, frozen=True, kw_only=True):
    code: str
    name: str
    type: str
    meter_code: str | None
    unit: str | None


class PricingUnitView(View, frozen=True, kw_only=True):
    code: str
    name: str
    currency: str
    conversion_rate: Amount


class PlanView(View, frozen=True, kw_only=True):
    code: str
    name: str
    currency: str
    interval: str
    latest_version: int


class PlanVersionView(View, frozen=True, kw_only=True):
    plan_code: str
    version: int
    prices: tuple[Price, ...]
    entitlements: tuple[Entitlement, ...]
    minimum_commitment: Amount | None
    trial_days: int | None
    created_by: str


class CustomerView(View, frozen=True, kw_only=True):
    external_id: str
    name: str
    email: str | None
    currency: str
    tax_rate: Amount | None
    parent_external_id: str | None
    invoice_to_parent: bool
    metadata: dict[str, str]
    updated_at: datetime


class ContractVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a subscription: what (kind, plan version, ends_at), when it takes effect, why, who."""

    version: int
    kind: str  # started | amended | cancelled
    effective_at: datetime
    plan_version: int
    reason: str | None
    ends_at: datetime | None = None
    created_by: str
    created_at: datetime


class SubscriptionView(View, frozen=True, kw_only=True):
    customer: str
    plan_code: str
    plan_version: int  # of the latest contract version (its effective_at may lie ahead)
    status: str  # active | cancelled (a cancelled subscription runs until ends_at)
    currency: str
    interval: str
    billing_anchor: str
    start_at: datetime
    trial_days: int
    billing_start: datetime  # start_at + the trial: nothing is billed before it
    ends_at: datetime | None
    versions: tuple[ContractVersion, ...]
    updated_at: datetime


class InvoiceSummary(View, frozen=True, kw_only=True):
    """An issued invoice in a list: a draft's amounts are computed when the invoice itself is read."""

    number: str | None
    customer: str
    subscription: str | None  # none: a wallet top-up's invoice
    wallet: str | None = None  # a top-up's: the wallet it buys credits for
    kind: str  # advance (the period's advance fees) | closing (the rest) | topup (credits bought)
    status: str  # draft | finalized | paid | void
    currency: str | None
    period_start: datetime
    period_end: datetime
    total: Amount | None
    amount_due: Amount | None
    paid: Amount
    updated_at: datetime


class CreditLineView(msgspec.Struct, frozen=True, kw_only=True):
    line_index: int
    amount: Amount


class CreditNoteView(View, frozen=True, kw_only=True):
    number: str
    invoice_id: str
    customer: str
    currency: str
    lines: tuple[CreditLineView, ...]  # empty for a credit note by amount
    subtotal: Amount
    tax: Amount
    total: Amount
    reason: str
    created_by: str


class WalletSummary(View, frozen=True, kw_only=True):
    """A wallet in a list (its balance and grants: `GET /v1/wallets/{id}`)."""

    customer: str
    name: str
    credit_unit: str
    currency: str
    priority: int
    due: tuple[datetime, ...]  # when the billing clock has to look: a grant expires, a recurring one comes again


class Document(msgspec.Struct, frozen=True):
    """One read-model row: what the store indexes (tenant, code, parent) and the view it returns."""

    tenant_id: str
    code: str
    parent: str | None
    view: View


VIEW_TYPES: dict[str, type[View]] = {
    "tenants": TenantView, "api_keys": ApiKeyView, "meters": MeterView, "features": FeatureView,
    "pricing_units": PricingUnitView, "plans": PlanView, "plan_versions": PlanVersionView,
    "customers": CustomerView, "subscriptions": SubscriptionView,
    "invoices": InvoiceSummary, "credit_notes": CreditNoteView, "wallets": WalletSummary,
}
