"""The invoices' use cases: draft a period's invoice (once), finalize with the next number, void, pay.

The amounts are not computed here: the caller (which reads the usage) hands `finalize` the computed
invoice, a pure function of the contract, its prices and the usage (`domain.invoice`).
"""

from collections.abc import Callable
from decimal import Decimal
from uuid import UUID

import msgspec

from domain.aggregate import Actor, acting
from domain.application import TallyApplication
from domain.billing import (
    CreditNoteSpec,
    InvoiceNumbers,
    IssuedCreditNote,
    IssuedInvoice,
    Kind,
)
from domain.errors import Conflict
from domain.invoice import Invoice
from domain.periods import Period
from domain.subscription import Subscription


class ChangedMeanwhile(Conflict):
    def __init__(self) -> None:
        super().__init__("the invoice changed at the same time; read it again and retry")


class Invoicing(TallyApplication):
    # a tenant's number counter gains an event per invoice: read from a snapshot, not replayed whole
    snapshotting_intervals = {InvoiceNumbers: 100}  # noqa: RUF012 (eventsourcing's class setting)

    def draft(self, by: Actor, subscription: Subscription, kind: Kind, period: Period) -> tuple[IssuedInvoice, bool]:
        """The period's invoice of that kind, and whether it was drafted now (False: it was there)."""
        invoice_id = IssuedInvoice.create_id(subscription.id, kind, period.start)
        existing = self.find(invoice_id)
        if existing is not None:
            return existing, False
        with acting(by):
            drafted = IssuedInvoice(tenant_id=subscription.tenant_id, customer=subscription.customer,
                                    subscription_id=subscription.id, kind=kind, period_start=period.start,
                                    period_end=period.end)
        try:
            self.save_or(ChangedMeanwhile(), drafted)
        except ChangedMeanwhile:  # another clock drafted it first
            return self.find(invoice_id), False
        return drafted, True

    def finalize(self, by: Actor, invoice: IssuedInvoice, prefix: str, content: Invoice) -> IssuedInvoice:
        numbers = self.find(InvoiceNumbers.create_id(invoice.tenant_id))
        with acting(by):
            if numbers is None:
                numbers = InvoiceNumbers(tenant_id=invoice.tenant_id)
            number = numbers.take(prefix)
            invoice.finalize(number, msgspec.structs.replace(content, number=number, status="finalized"))
        self.save_or(ChangedMeanwhile(), numbers, invoice)
        return invoice

    def void(self, by: Actor, tenant_id: UUID, invoice_id: UUID, reason: str | None) -> IssuedInvoice:
        return self._change(by, tenant_id, invoice_id, lambda invoice: invoice.void(reason))

    def pay(self, by: Actor, tenant_id: UUID, invoice_id: UUID, amount: Decimal | None) -> IssuedInvoice:
        return self._change(by, tenant_id, invoice_id, lambda invoice: invoice.pay(amount))

    def _change(self, by: Actor, tenant_id: UUID, invoice_id: UUID,
                change: Callable[[IssuedInvoice], None]) -> IssuedInvoice:
        invoice = self.invoice(tenant_id, invoice_id)
        with acting(by):
            change(invoice)
        self.save_or(ChangedMeanwhile(), invoice)
        return invoice

    def credit(self, by: Actor, tenant_id: UUID, invoice_id: UUID, spec: CreditNoteSpec) -> IssuedCreditNote:
        invoice = self.invoice(tenant_id, invoice_id)
        with acting(by):
            number, subtotal, tax, total, lines = invoice.credit(spec)
            assert invoice.content is not None
            note = IssuedCreditNote(
                tenant_id=tenant_id, invoice_id=invoice.id,
                customer=invoice.customer, number=number, currency=invoice.content.currency, lines=lines,
                subtotal=subtotal, tax=tax, total=total, reason=spec.reason)
        self.save_or(ChangedMeanwhile(), invoice, note)
        return note

    def invoice(self, tenant_id: UUID, invoice_id: UUID) -> IssuedInvoice:
        return self.owned(IssuedInvoice, tenant_id, invoice_id, "invoice")
