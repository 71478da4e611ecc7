"""Property: however credit notes are asked for, by lines or by amount, an invoice is never credited
below zero, nor a line beyond what it billed (domain/billing.py, in memory)."""

from datetime import UTC, datetime
from decimal import Decimal
from uuid import uuid4

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.aggregate import Actor, acting
from domain.billing import CreditLine, CreditNoteSpec, IssuedInvoice
from domain.errors import Invalid
from domain.invoice import Invoice, InvoiceLine, sums
from domain.money import Amount
from domain.periods import Period

START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
cents = st.integers(min_value=1, max_value=100_000).map(lambda n: Decimal(n) / 100)


def finalized(amounts: list[Decimal], tax_rate: Decimal) -> IssuedInvoice:
    lines = [InvoiceLine(description=f"line {n}", period_start=START, period_end=END, quantity=Amount(1),
                         amount=Amount(a)) for n, a in enumerate(amounts)]
    content = Invoice(customer="acme", subscription="sub_x", status="finalized", currency="USD",
                      period_start=START, period_end=END, lines=tuple(lines),
                      **msgspec.structs.asdict(sums(lines, [], Period(START, END), "USD", tax_rate)))
    with acting(Actor("key_test")):
        invoice = IssuedInvoice(tenant_id=uuid4(), customer="acme", subscription_id=uuid4(), kind="closing",
                                period_start=START, period_end=END)
        invoice.finalize("INV-000001", content)
    return invoice


requests = st.one_of(
    st.builds(lambda amount: ("amount", amount), cents),
    st.builds(lambda index, amount: ("line", index, amount), st.integers(0, 4), cents),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(cents, min_size=1, max_size=5), st.sampled_from([Decimal(0), Decimal("0.2"), Decimal("0.0825")]),
       st.lists(requests, max_size=12))
def test_credit_notes_never_take_an_invoice_or_a_line_below_zero(amounts, tax_rate, asked):
    invoice = finalized(amounts, tax_rate)
    assert invoice.content is not None
    for request in asked:
        if request[0] == "amount":
            spec = CreditNoteSpec(invoice_id="inv_x", amount=Amount(request[1]), reason="r")
        else:
            spec = CreditNoteSpec(invoice_id="inv_x", lines=(CreditLine(line_index=request[1],
                                                                        amount=Amount(request[2])),), reason="r")
        before = invoice.credited
        try:
            with acting(Actor("key_test")):
                invoice.credit(spec)
        except Invalid:
            assert invoice.credited == before  # a refused credit note changes nothing
        assert 0 <= invoice.credited <= invoice.content.total
        for index, credited in invoice.credited_lines.items():
            assert credited <= invoice.content.lines[index].amount
