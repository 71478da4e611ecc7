"""Reducers from the events of tenants, keys, the catalogue, customers and subscriptions to their
documents.

Pure: `(document | None, event) -> document`; an event they do not know changes nothing.
"""

from datetime import timedelta
from typing import Any

import msgspec

from domain.api_key import ApiKey
from domain.billing import IssuedCreditNote, IssuedInvoice
from domain.customer import Customer
from domain.feature import Feature
from domain.meter import Meter
from domain.money import Amount
from domain.periods import advance
from domain.plan import Plan
from domain.plan_version import PlanVersion
from domain.pricing_unit import PricingUnit
from domain.subscription import Subscription
from domain.tenant import Tenant
from domain.wallet import Wallet
from projections.views import (
    ApiKeyView,
    ContractVersion,
    CreditLineView,
    CreditNoteView,
    CustomerView,
    Document,
    FeatureView,
    InvoiceSummary,
    MeterView,
    PlanVersionView,
    PlanView,
    PricingUnitView,
    SubscriptionView,
    TenantView,
    WalletSummary,
    public_id,
)

COLLECTIONS: dict[type, str] = {
    Tenant.Opened: "tenants", Tenant.SettingsChanged: "tenants",
    ApiKey.Issued: "api_keys", ApiKey.Revoked: "api_keys", ApiKey.Reinstated: "api_keys",
    Meter.Defined: "meters", Feature.Defined: "features", PricingUnit.Defined: "pricing_units",
    Plan.Defined: "plans", Plan.VersionPublished: "plans", PlanVersion.Published: "plan_versions",
    Customer.Registered: "customers", Customer.DetailsChanged: "customers",
    Subscription.Started: "subscriptions", Subscription.Amended: "subscriptions",
    Subscription.CancelRequested: "subscriptions",
    IssuedInvoice.Drafted: "invoices", IssuedInvoice.Finalized: "invoices", IssuedInvoice.Voided: "invoices",
    IssuedInvoice.Paid: "invoices", IssuedCreditNote.Issued: "credit_notes", Wallet.Created: "wallets",
    Wallet.Granted: "wallets", Wallet.Renewed: "wallets",  # a debit changes nothing listed: no write per debit
}


def collection_of(event: Any) -> str | None:
    return COLLECTIONS.get(type(event))


def _new(event: Any, code: str, view: Any, parent: str | None = None) -> Document:
    return Document(tenant_id=str(event.tenant_id), code=code, parent=parent, view=view)


def _later(document: Document, moments: list) -> tuple:
    known: tuple = document.view.due  # type: ignore[attr-defined]
    return tuple(sorted({*known, *moments}))


def _changed(document: Document, **changes: Any) -> Document:
    return msgspec.structs.replace(document, view=msgspec.structs.replace(document.view, **changes))


def reduce(document: Document | None, event: Any) -> Document | None:  # noqa: C901, PLR0911
    created = {"id": public_id(collection_of(event) or "tenants", event.originator_id), "created_at": event.timestamp}
    match event:
        case Tenant.Opened(settings=settings):
            view = TenantView(**created, **msgspec.structs.asdict(settings), updated_at=event.timestamp)
            return Document(tenant_id=str(event.originator_id), code=created["id"], parent=None, view=view)
        case Tenant.SettingsChanged(settings=settings) if document:
            return _changed(document, **msgspec.structs.asdict(settings), updated_at=event.timestamp)
        case ApiKey.Issued():
            view = ApiKeyView(
                **created, role=event.role, customer=event.customer, prefix=event.prefix, created_by=event.actor
            )
            return _new(event, code=event.secret_hash, view=view)
        case ApiKey.Revoked() if document:
            return _changed(document, revoked=True, revoked_at=event.timestamp)
        case ApiKey.Reinstated() if document:
            return _changed(document, revoked=False, revoked_at=None)
        case Meter.Defined(spec=spec):
            return _new(event, spec.code, MeterView(**created, **msgspec.structs.asdict(spec)))
        case Feature.Defined(spec=spec):
            return _new(event, spec.code, FeatureView(**created, **msgspec.structs.asdict(spec)))
        case PricingUnit.Defined(spec=spec):
            return _new(event, spec.code, PricingUnitView(**created, **msgspec.structs.asdict(spec)))
        case Plan.Defined(spec=spec):
            return _new(event, spec.code, PlanView(**created, **msgspec.structs.asdict(spec), latest_version=0))
        case Plan.VersionPublished(number=number) if document:
            return _changed(document, latest_version=number)
        case PlanVersion.Published(spec=spec):
            view = PlanVersionView(
                **created, plan_code=event.plan_code, version=event.number, created_by=event.actor,
                **msgspec.structs.asdict(spec),
            )
            return _new(event, f"{event.plan_code}/{event.number}", view, parent=event.plan_code)
        case Customer.Registered(details=details):
            view = CustomerView(
                **created, external_id=event.external_id, currency=event.currency, updated_at=event.timestamp,
                **msgspec.structs.asdict(details),
            )
            return _new(event, event.external_id, view, parent=details.parent_external_id)
        case Customer.DetailsChanged(details=details) if document:
            changed = _changed(document, **msgspec.structs.asdict(details), updated_at=event.timestamp)
            return msgspec.structs.replace(changed, parent=details.parent_external_id)
        case Subscription.Started() | Subscription.Amended() | Subscription.CancelRequested():
            return _subscription(document, event, created)
        case IssuedInvoice.Drafted():
            view = InvoiceSummary(
                **created, number=None, customer=event.customer, kind=event.kind, status="draft", currency=None,
                subscription=None if event.kind == "topup" else public_id("subscriptions", event.subscription_id),
                wallet=public_id("wallets", event.subscription_id) if event.kind == "topup" else None,
                period_start=event.period_start,
                period_end=event.period_end, total=None, amount_due=None, paid=Amount(0), updated_at=event.timestamp,
            )
            return _new(event, created["id"], view, parent=event.customer)
        case IssuedInvoice.Finalized(content=content) if document:
            return _changed(document, number=event.number, status="finalized", currency=content.currency,
                            total=content.total, amount_due=content.amount_due, updated_at=event.timestamp)
        case IssuedInvoice.Voided() if document:
            return _changed(document, status="void", updated_at=event.timestamp)
        case IssuedInvoice.Paid(amount=amount) if document:
            view: InvoiceSummary = document.view  # type: ignore[assignment]
            paid = Amount(view.paid + amount)
            status = "paid" if view.amount_due is not None and paid >= view.amount_due else view.status
            return _changed(document, paid=paid, status=status, updated_at=event.timestamp)
        case IssuedCreditNote.Issued():
            invoice = public_id("invoices", event.invoice_id)
            view = CreditNoteView(
                **created, number=event.number, invoice_id=invoice, customer=event.customer, currency=event.currency,
                lines=tuple(CreditLineView(line_index=i, amount=Amount(a)) for i, a in event.lines),
                subtotal=Amount(event.subtotal), tax=Amount(event.tax), total=Amount(event.total),
                reason=event.reason, created_by=event.actor,
            )
            return _new(event, event.number, view, parent=invoice)
        case Wallet.Created(spec=spec):
            view = WalletSummary(**created, customer=spec.customer, name=spec.name, credit_unit=spec.credit_unit,
                                 currency=spec.currency, priority=spec.priority, due=())
            return _new(event, created["id"], view, parent=spec.customer)
        case Wallet.Granted(spec=spec) if document:
            due = [spec.expires_at] if spec.expires_at is not None else []
            if spec.recurrence is not None:
                due.append(advance(event.at, spec.recurrence.interval, 1))
            return _changed(document, due=_later(document, due))
        case Wallet.Renewed() if document:
            return _changed(document, due=_later(document, [event.next_at]))
        case _:
            return document


def _subscription(document: Document | None, event: Any, created: dict[str, Any]) -> Document | None:
    """A subscription and its contract versions: one version per change (who, when, what, why)."""
    if isinstance(event, Subscription.Started):
        first = ContractVersion(version=1, kind="started", effective_at=event.start_at, plan_version=event.plan_version,
                                reason=None, created_by=event.actor, created_at=event.timestamp)
        view = SubscriptionView(
            **created, customer=event.customer, plan_code=event.plan_code, plan_version=event.plan_version,
            status="active", currency=event.currency, interval=event.interval, billing_anchor=event.billing_anchor,
            start_at=event.start_at, trial_days=event.trial_days,
            billing_start=event.start_at + timedelta(days=event.trial_days), ends_at=None, versions=(first,),
            updated_at=event.timestamp,
        )
        return _new(event, created["id"], view, parent=event.customer)
    if document is None:
        return None
    view: SubscriptionView = document.view  # type: ignore[assignment]
    cancelled = isinstance(event, Subscription.CancelRequested)
    version = ContractVersion(
        version=len(view.versions) + 1, kind="cancelled" if cancelled else "amended",
        effective_at=event.ends_at if cancelled else event.effective_at,
        plan_version=view.plan_version if cancelled else event.plan_version, reason=event.reason,
        ends_at=event.ends_at if cancelled else None, created_by=event.actor, created_at=event.timestamp,
    )
    changes = {"status": "cancelled", "ends_at": event.ends_at} if cancelled else {"plan_version": event.plan_version}
    return _changed(document, **changes, versions=(*view.versions, version), updated_at=event.timestamp)
