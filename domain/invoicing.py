"""The invoices' use cases: draft a period's invoice (once), finalize with the next number, void, pay.

The amounts are not computed here: the caller (which reads the usage) hands `finalize` the computed
invoice, a pure function of the contract, its prices and the usage (`domain.invoice`).
"""

from collections.abc import Callable, Sequence
from datetime import datetime
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
from domain.errors import Conflict, Invalid
from domain.invoice import Invoice, InvoiceLine, sums
from domain.money import Amount, round_money
from domain.periods import Period
from domain.subscription import Subscription
from domain.wallet import Wallet, WalletSpec


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
        return self.draft_many(by, [(subscription, kind, period)])[0]

    def draft_many(self, by: Actor,
                   wanted: Sequence[tuple[Subscription, Kind, Period]]) -> list[tuple[IssuedInvoice, bool]]:
        """Draft invoices not there yet, in one save; as `draft` answers, one by one, when one of
        them was drafted meanwhile (by another clock)."""
        with acting(by):
            drafted = [IssuedInvoice(tenant_id=subscription.tenant_id, customer=subscription.customer,
                                     subscription_id=subscription.id, kind=kind, period_start=period.start,
                                     period_end=period.end) for subscription, kind, period in wanted]
        try:
            self.save_or(ChangedMeanwhile(), *drafted)
        except ChangedMeanwhile:
            if len(wanted) == 1:
                return [(self.find(drafted[0].id), False)]
            return [self.draft(by, *each) for each in wanted]
        return [(invoice, True) for invoice in drafted]

    def finalize(self, by: Actor, invoice: IssuedInvoice, prefix: str, content: Invoice) -> IssuedInvoice:
        self.finalize_many(by, prefix, [(invoice, content)])
        return invoice

    def finalize_many(self, by: Actor, prefix: str, billed: Sequence[tuple[IssuedInvoice, Invoice]]) -> None:
        """Number one tenant's drafts in their order, each recording what it bills, in one save.
        ChangedMeanwhile, and nothing saved, when the tenant's numbers or one of the drafts moved on
        since they were read: the drafts given are spoilt then (read them again)."""
        tenant_id = billed[0][0].tenant_id
        numbers = self.find(InvoiceNumbers.create_id(tenant_id))
        with acting(by):
            if numbers is None:
                numbers = InvoiceNumbers(tenant_id=tenant_id)
            for invoice, content in billed:
                assert invoice.tenant_id == tenant_id, "one tenant's numbers"
                number = numbers.take(prefix)
                invoice.finalize(number, msgspec.structs.replace(content, number=number, status="finalized"))
        self.save_or(ChangedMeanwhile(), numbers, *(invoice for invoice, _ in billed))

    def top_up(self, by: Actor, wallet: Wallet, amount: Decimal, prefix: str, tax_rate: Decimal,
               now: datetime) -> IssuedInvoice:
        """Sell `amount` credits of the wallet: its invoice, finalized at once; the credits land when it
        is paid. ChangedMeanwhile when the numbers or the wallet moved on (read them again)."""
        numbers = self.find(InvoiceNumbers.create_id(wallet.tenant_id))
        with acting(by):
            numbers = numbers or InvoiceNumbers(tenant_id=wallet.tenant_id)
            invoice = topup_invoice(wallet, amount, numbers, prefix, tax_rate, now)
        self.save_or(ChangedMeanwhile(), numbers, invoice, wallet)
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
            bought = self._topup_wallet(invoice)
        self.save_or(ChangedMeanwhile(), invoice, *bought)
        return invoice

    def _topup_wallet(self, invoice: IssuedInvoice) -> list[Wallet]:
        """A top-up's wallet, once its invoice is paid (the credits land) or voided (they never will)."""
        if invoice.kind != "topup" or invoice.status not in ("paid", "void"):
            return []
        wallet: Wallet = self.find(invoice.subscription_id)
        if invoice.status == "paid":
            wallet.land_topup(invoice.id)
        else:
            wallet.void_topup(invoice.id)
        return [wallet]

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


def topup_invoice(wallet: Wallet, amount: Decimal, numbers: InvoiceNumbers, prefix: str, tax_rate: Decimal,
                  now: datetime, auto: bool = False) -> IssuedInvoice:
    """The finalized invoice selling `amount` credits at the wallet's topup_conversion_rate (tax at
    `tax_rate`), numbered from `numbers`; the wallet records the top-up. Nothing is saved."""
    spec = wallet.spec
    price = round_money(amount * spec.price_of_credit, spec.currency)
    if price <= 0:
        raise Invalid("amount", f"{amount} {spec.credit_unit} cost nothing at {spec.price_of_credit} "
                                f"{spec.currency} each: buy more")
    invoice = IssuedInvoice(tenant_id=wallet.tenant_id, customer=wallet.customer, subscription_id=wallet.id,
                            kind="topup", period_start=now, period_end=now, key=str(len(wallet.topups) + 1))
    wallet.request_topup(amount, invoice.id, auto)
    number = numbers.take(prefix)
    invoice.finalize(number, topup_content(spec, amount, now, tax_rate, number))
    return invoice


def topup_content(spec: WalletSpec, amount: Decimal, now: datetime, tax_rate: Decimal, number: str) -> Invoice:
    """What a top-up invoice bills: `amount` credits at the wallet's topup_conversion_rate, taxed."""
    price = round_money(amount * spec.price_of_credit, spec.currency)
    line = InvoiceLine(description=f"Top-up: {amount} {spec.credit_unit} ({spec.name})", period_start=now,
                       period_end=now, quantity=Amount(amount), unit_amount=Amount(spec.price_of_credit),
                       amount=Amount(price))
    return Invoice(id=None, number=number, customer=spec.customer, subscription=None, status="finalized",
                   currency=spec.currency, period_start=now, period_end=now, lines=(line,),
                   **msgspec.structs.asdict(sums([line], [], Period(now, now), spec.currency, tax_rate)))
