"""The invoice PDF (api/pdf.py), read back as text: the tenant's legal details, the invoice's number,
every line and tier, the sums in API.md's order with the currency, amounts exactly as their decimal
strings, many lines over several pages, any customer name, and the same bytes every time.
No server: the invoice and the views are built here and rendered directly.
"""

import io
import re
from datetime import UTC, datetime
from decimal import Decimal

from pypdf import PdfReader

from api import pdf
from api.pdf import render
from domain.invoice import Invoice, InvoiceLine, TierLine
from domain.money import Amount, round_money
from projections.views import CustomerView, TenantView

JANUARY = datetime(2025, 1, 1, tzinfo=UTC)
FEBRUARY = datetime(2025, 2, 1, tzinfo=UTC)


def tenant(**changes: object) -> TenantView:
    fields = dict(id="ten_" + "a" * 32, created_at=JANUARY, name="Acme", legal_name="Acme Cloud GmbH",
                  address="Hauptstraße 1\n10115 Berlin\nGermany", tax_id="DE123456789",
                  default_tax_rate=Amount("0.19"), grace_period_hours=24, invoice_prefix="INV-",
                  payment_terms_days=30, updated_at=JANUARY)
    return TenantView(**(fields | changes))


def customer(**changes: object) -> CustomerView:
    fields = dict(id="cus_" + "b" * 32, created_at=JANUARY, external_id="alice", name="Alice Ltd",
                  email="billing@alice.example", currency="USD", tax_rate=None, parent_external_id=None,
                  invoice_to_parent=False, metadata={}, updated_at=JANUARY)
    return CustomerView(**(fields | changes))


def line(description: str, amount: str, quantity: str = "1", unit_amount: str | None = None,
         tiers: tuple[TierLine, ...] | None = None) -> InvoiceLine:
    return InvoiceLine(description=description, period_start=JANUARY, period_end=FEBRUARY, quantity=Amount(quantity),
                       unit_amount=None if unit_amount is None else Amount(unit_amount), tiers=tiers,
                       amount=Amount(amount))


def invoice(lines: list[InvoiceLine], currency: str = "USD", tax_rate: str = "0.2", true_up: str = "0",
            number: str | None = "INV-0042", status: str = "finalized", customer_id: str = "alice") -> Invoice:
    """An invoice whose sums follow API.md from its lines (no credits applied yet)."""
    subtotal = round_money(sum((item.amount for item in lines), Decimal(0)), currency)
    tax = round_money((subtotal + Decimal(true_up)) * Decimal(tax_rate), currency)
    total, credits = subtotal + Decimal(true_up) + tax, round_money(Decimal(0), currency)
    return Invoice(id="inv_" + "c" * 32 if number else None, number=number, customer=customer_id,
                   subscription="sub_" + "d" * 32, status=status, currency=currency, period_start=JANUARY,
                   period_end=FEBRUARY, lines=tuple(lines), subtotal=Amount(subtotal),
                   commitment_true_up=Amount(true_up), tax_rate=Amount(tax_rate), tax=Amount(tax),
                   total=Amount(total), credits_applied=Amount(credits),
                   amount_due=Amount(total - credits))


def pages(document: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(document)).pages]


def words(text: str) -> str:
    """Text with every run of whitespace as one space: a wrapped cell reads as one phrase."""
    return re.sub(r"\s+", " ", text)


GRADUATED = (TierLine(from_units=Amount("0"), up_to=Amount("1000"), units=Amount("1000"), unit_amount=Amount("0.01"),
                      flat_amount=Amount("0"), amount=Amount("10.00")),
             TierLine(from_units=Amount("1000"), up_to=None, units=Amount("234"), unit_amount=Amount("0.005"),
                      flat_amount=Amount("2.50"), amount=Amount("3.670")))


def test_an_invoice_shows_the_tenant_the_customer_every_line_and_the_sums_with_their_currency():
    # Given a finalized USD invoice with a flat fee and a graduated metered line, taxed at 20%
    lines = [line("pro v1: fee", "49.00", unit_amount="49.00"),
             line("pro v1: api_calls (graduated)", "13.67", quantity="1234", tiers=GRADUATED)]
    given = invoice(lines)
    # When it is rendered and read back
    text = "\n".join(pages(render(given, tenant(), customer())))
    # Then the tenant's legal name, address and tax id, and the invoice number are on it
    for expected in ("Acme Cloud GmbH", "Hauptstraße 1", "10115 Berlin", "DE123456789", "INV-0042", "finalized",
                     "2025-01-01", "2025-02-01"):
        assert expected in text, expected
    # And who is billed
    for expected in ("Alice Ltd", "alice", "billing@alice.example"):
        assert expected in text, expected
    # And every line's description and amount, and each tier's units and unrounded amount
    for expected in ("pro v1: fee", "49.00", "pro v1: api_calls (graduated)", "13.67", "1234", "3.670", "0.005"):
        assert expected in words(text), expected
    # And the sums, in API.md's order, each with the currency and the tax rate as a percent
    sums = ["Subtotal 62.67 USD", "Tax (20%) 12.53 USD", "Total 75.20 USD", "Credits applied 0.00 USD",
            "Amount due 75.20 USD"]
    flat = words(text)
    positions = [flat.find(expected) for expected in sums]
    assert -1 not in positions, (sums, flat)
    assert positions == sorted(positions)
    # And a zero commitment true-up is left out
    assert "true-up" not in flat


def test_a_commitment_true_up_is_shown_between_the_subtotal_and_the_tax():
    # Given an invoice whose minimum commitment exceeds its usage by 40.00
    given = invoice([line("pro v1: api_calls (per_unit)", "60.00", quantity="6000", unit_amount="0.01")],
                    true_up="40.00")
    # When it is rendered
    flat = words("\n".join(pages(render(given, tenant(), customer()))))
    # Then the true-up is shown after the subtotal and before the tax
    assert flat.find("Subtotal 60.00 USD") < flat.find("Commitment true-up 40.00 USD") < flat.find("Tax (20%) 20.00 USD")


def test_an_invoice_without_a_number_is_titled_by_its_status():
    # Given the upcoming invoice (no id, no number) and a draft
    upcoming = invoice([line("pro v1: fee", "49.00")], number=None, status="upcoming")
    draft = invoice([line("pro v1: fee", "49.00")], number=None, status="draft")
    # When they are rendered, then each is titled by what it is
    assert "Invoice UPCOMING" in pages(render(upcoming, tenant(), customer()))[0]
    assert "Invoice DRAFT" in pages(render(draft, tenant(), customer()))[0]


def test_the_tenant_name_stands_in_when_there_is_no_legal_name():
    # Given a tenant with only its display name
    text = pages(render(invoice([line("pro v1: fee", "49.00")]), tenant(legal_name=None, address=None, tax_id=None),
                        customer()))[0]
    # Then that name heads the invoice
    assert "Acme" in text


def test_a_hundred_and_twenty_lines_flow_over_several_pages_each_with_the_table_header():
    # Given an invoice of 120 lines, one with a description long enough to wrap
    lines = [line(f"Line {index:03d}: api_calls for project {index:03d}", f"{index}.{index % 100:02d}")
             for index in range(1, 121)]
    lines[5] = line("Line 006: " + "a very long description of a metered price that must wrap " * 3, "6.06")
    # When it is rendered
    document = render(invoice(lines), tenant(), customer())
    texts = pages(document)
    # Then it takes several pages, each repeating the table header and numbered
    assert len(texts) >= 3
    for number, text in enumerate(texts, start=1):
        assert "Description" in text and "Unit amount" in text, number
        assert f"page {number} of {len(texts)}" in text, number
    # And every line is on it, the long one in full
    flat = words("\n".join(texts))
    for index in range(1, 121):
        if index != 6:
            assert f"Line {index:03d}: api_calls for project {index:03d}" in flat, index
        assert f"{index}.{index % 100:02d}" in flat, index
    assert "that must wrap a very long description" in flat


def test_a_jpy_invoice_shows_whole_yen():
    # Given a JPY invoice of 1200 yen, untaxed
    given = invoice([line("pro v1: fee", "1200", unit_amount="1200")], currency="JPY", tax_rate="0")
    # When it is rendered
    flat = words("\n".join(pages(render(given, tenant(), customer(currency="JPY")))))
    # Then its amounts read 1200, never 1200.00
    assert "Total 1200 JPY" in flat and "Amount due 1200 JPY" in flat
    assert "1200.00" not in flat and "Tax (0%) 0 JPY" in flat


def test_a_customer_named_in_any_script_is_rendered():
    # Given customers named in Latin with diacritics and in Japanese
    for name in ("Zoë Åberg", "東京"):
        # When their invoice is rendered, then it does not fail and is a PDF
        document = render(invoice([line("pro v1: fee", "49.00")]), tenant(), customer(name=name))
        text = pages(document)[0]
        assert document.startswith(b"%PDF-")
        assert "Customer: alice" in text
    # And a name the font can draw reads back as it is
    assert "Zoë Åberg" in pages(render(invoice([line("fee", "1.00")]), tenant(), customer(name="Zoë Åberg")))[0]


def test_rendering_the_same_invoice_twice_gives_the_same_bytes():
    # Given an invoice with tiers
    given = invoice([line("pro v1: api_calls (graduated)", "13.67", quantity="1234", tiers=GRADUATED)])
    # When it is rendered twice, then the bytes are equal
    assert render(given, tenant(), customer()) == render(given, tenant(), customer())


def test_without_dejavu_the_core_font_draws_western_text_and_replaces_the_rest(monkeypatch):
    # Given a system without the DejaVu fonts
    monkeypatch.setattr(pdf, "FONT_DIRS", ())
    # When invoices for customers named in Latin with diacritics and in Japanese are rendered
    western = pages(render(invoice([line("pro v1: fee — annual", "49.00")]), tenant(), customer(name="Zoë Åberg")))
    japanese = pages(render(invoice([line("pro v1: fee", "49.00")]), tenant(), customer(name="東京 Ltd")))
    # Then the Western text reads back as it is, and the characters the font lacks become "?"
    assert "Zoë Åberg" in western[0] and "pro v1: fee — annual" in western[0]
    assert "2025-01-01 – 2025-02-01" in western[0]
    assert "?? Ltd" in japanese[0] and "Amount due 58.80 USD" in words(japanese[0])
