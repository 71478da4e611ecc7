"""An invoice as a PDF: one A4 document, the same bytes for the same invoice.

Top left the tenant's legal details, top right the invoice's number (DRAFT or UPCOMING before it
has one), status and period; then who is billed, the lines (a tiered line's tiers indented under
it, the table's header repeated on every page) and the sums in API.md's order. Amounts are shown
as the decimal strings they are, never through float. Text is set in DejaVu Sans, embedded, when
the system has it, else in the core Helvetica; a character the font cannot draw becomes "?".
"""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from fpdf import FPDF, FontFace
from fpdf.enums import TableBordersLayout
from fpdf.table import Table

from domain.invoice import Invoice, InvoiceLine, TierLine
from projections.views import CustomerView, TenantView

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"),
             Path("/usr/share/fonts/TTF"), Path("/usr/local/share/fonts"))
CORE_FONT_ENCODING = "windows-1252"
MARGIN_MM = 15
COLUMN_WIDTHS_MM = (64, 40, 24, 26, 26)  # description, period, quantity, unit amount, amount: 180 mm
COLUMN_ALIGNS = ("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT")
TIER_INDENT_MM = 6
GREY = (110, 110, 110)
RULE = (200, 200, 200)


def render(invoice: Invoice, tenant: TenantView, customer: CustomerView) -> bytes:
    """The invoice as PDF bytes: a pure function of its arguments (the creation date is its period_end)."""
    assert invoice.customer == customer.external_id, (invoice.customer, customer.external_id)
    assert invoice.period_end.tzinfo is not None, invoice.period_end
    pdf = _Document(_title(invoice))
    pdf.set_creation_date(invoice.period_end.astimezone(UTC))
    pdf.set_title(f"Invoice {_title(invoice)}")
    pdf.set_author(tenant.legal_name or tenant.name)
    pdf.add_page()
    _header(pdf, invoice, tenant)
    _bill_to(pdf, customer)
    _lines(pdf, invoice)
    _sums(pdf, invoice)
    document = bytes(pdf.output())
    assert document.startswith(b"%PDF-"), document[:8]
    return document


class _Document(FPDF):
    """An A4 page with the invoice's number and the page count at the foot of every page."""

    def __init__(self, title: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.invoice_title = title
        self.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
        self.set_auto_page_break(auto=True, margin=MARGIN_MM + 5)
        self.typeface = _font_family(self)
        self.set_font(self.typeface, size=9)

    def footer(self) -> None:
        self.set_y(-MARGIN_MM)
        self.set_font(self.typeface, size=8)
        self.set_text_color(*GREY)
        self.cell(0, 5, self.text_for(f"Invoice {self.invoice_title} · page {self.page_no()} of {{nb}}"), align="C")
        self.set_text_color(0)

    def text_for(self, text: str) -> str:
        """`text` with every character the current font cannot draw replaced by "?"."""
        if self.typeface == "Helvetica":
            return "".join(c if _in_code_page(c) else "?" for c in text)
        cmap = self.fonts[self.typeface.lower()].cmap
        return "".join(c if c.isspace() or ord(c) in cmap else "?" for c in text)


def _in_code_page(character: str) -> bool:
    try:
        character.encode(CORE_FONT_ENCODING)
    except UnicodeEncodeError:
        return False
    return True


def _font_family(pdf: FPDF) -> str:
    """DejaVu Sans (regular and bold) when installed, else the core Helvetica (Windows-1252 only)."""
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            pdf.add_font("DejaVu", "", str(regular))
            pdf.add_font("DejaVu", "B", str(bold))
            return "DejaVu"
    pdf.core_fonts_encoding = CORE_FONT_ENCODING  # what the core fonts' WinAnsiEncoding draws: – — € “ ”
    return "Helvetica"


def _title(invoice: Invoice) -> str:
    return invoice.number or invoice.status.upper()


def _money(amount: Decimal) -> str:
    """An amount exactly as its decimal string: "1200" for JPY, "12.50" for USD, never "1.25E+1"."""
    assert isinstance(amount, Decimal), amount
    return format(amount, "f")


def _percent(rate: Decimal) -> str:
    """A rate as a percent: "0.2" -> "20%", "0.075" -> "7.5%"."""
    text = format(rate.scaleb(2), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


def _moment(at: datetime) -> str:
    """A UTC date, with the time when it is not midnight."""
    at = at.astimezone(UTC)
    if (at.hour, at.minute, at.second, at.microsecond) == (0, 0, 0, 0):
        return at.strftime("%Y-%m-%d")
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _period(start: datetime, end: datetime) -> str:
    return f"{_moment(start)} – {_moment(end)}"


def _header(pdf: _Document, invoice: Invoice, tenant: TenantView) -> None:
    """The tenant's legal details on the left; the invoice's title, status and period on the right."""
    top, half = pdf.get_y(), pdf.epw / 2
    pdf.set_font(pdf.typeface, "B", 12)
    pdf.multi_cell(half, 6, pdf.text_for(tenant.legal_name or tenant.name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(pdf.typeface, size=9)
    if tenant.address:
        pdf.multi_cell(half, 4.5, pdf.text_for(tenant.address), new_x="LMARGIN", new_y="NEXT")
    if tenant.tax_id:
        pdf.multi_cell(half, 4.5, pdf.text_for(f"Tax ID: {tenant.tax_id}"), new_x="LMARGIN", new_y="NEXT")
    left_bottom = pdf.get_y()
    pdf.set_xy(MARGIN_MM + half, top)
    pdf.set_font(pdf.typeface, "B", 18)
    pdf.multi_cell(half, 9, pdf.text_for(f"Invoice {_title(invoice)}"), align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_font(pdf.typeface, size=9)
    for label, value in (("Status", invoice.status), ("Period", _period(invoice.period_start, invoice.period_end)),
                         ("Currency", invoice.currency)):
        pdf.multi_cell(half, 4.5, pdf.text_for(f"{label}: {value}"), align="R", new_x="LEFT", new_y="NEXT")
    pdf.set_xy(MARGIN_MM, max(left_bottom, pdf.get_y()) + 8)


def _bill_to(pdf: _Document, customer: CustomerView) -> None:
    pdf.set_font(pdf.typeface, size=8)
    pdf.set_text_color(*GREY)
    pdf.cell(0, 4, "BILL TO", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0)
    pdf.set_font(pdf.typeface, "B", 10)
    pdf.multi_cell(pdf.epw / 2, 5, pdf.text_for(customer.name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(pdf.typeface, size=9)
    details = [f"Customer: {customer.external_id}"] + ([customer.email] if customer.email else [])
    for detail in details:
        pdf.multi_cell(pdf.epw / 2, 4.5, pdf.text_for(detail), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(8)


def _lines(pdf: _Document, invoice: Invoice) -> None:
    """The lines table; fpdf2 wraps long cells and repeats the header row on each new page."""
    heading = ("Description", "Period", "Quantity", "Unit amount", f"Amount ({invoice.currency})")
    tier_style, period_style = FontFace(color=GREY, size_pt=7.5), FontFace(size_pt=8)
    pdf.set_font(pdf.typeface, size=8.5)
    with pdf.table(col_widths=COLUMN_WIDTHS_MM, width=pdf.epw, text_align=COLUMN_ALIGNS, line_height=4.5,
                   borders_layout=TableBordersLayout.HORIZONTAL_LINES, padding=(1.2, 1, 1.2, 1),
                   headings_style=FontFace(emphasis="BOLD", size_pt=8, fill_color=(240, 240, 240)),
                   v_align="TOP") as table:
        header = table.row()
        for title in heading:
            header.cell(pdf.text_for(title))
        for line in invoice.lines:
            _line_row(pdf, table, line, period_style)
            for number, tier in enumerate(line.tiers or (), start=1):
                _tier_row(pdf, table, number, tier, tier_style)
    pdf.ln(4)


def _line_row(pdf: _Document, table: Table, line: InvoiceLine, period_style: FontFace) -> None:
    unit_amount = "" if line.unit_amount is None else _money(line.unit_amount)
    row = table.row()
    row.cell(pdf.text_for(line.description))
    row.cell(pdf.text_for(_period(line.period_start, line.period_end)), style=period_style)
    for text in (_money(line.quantity), unit_amount, _money(line.amount)):
        row.cell(text)


def _tier_row(pdf: _Document, table: Table, number: int, tier: TierLine, style: FontFace) -> None:
    """A tier's share of its line, indented: its range, units, unit amount and (unrounded) amount."""
    bound = f"{_money(tier.from_units)} – {_money(tier.up_to)}" if tier.up_to is not None \
        else f"{_money(tier.from_units)} and above"
    flat = f", flat {_money(tier.flat_amount)}" if tier.flat_amount else ""
    row = table.row()
    row.cell(pdf.text_for(f"Tier {number}: {bound}{flat}"), style=style, padding=(0.6, 1, 0.6, 1 + TIER_INDENT_MM))
    row.cell("", style=style)
    for text in (_money(tier.units), _money(tier.unit_amount), _money(tier.amount)):
        row.cell(text, style=style, padding=(0.6, 1, 0.6, 1))


def _sums(pdf: _Document, invoice: Invoice) -> None:
    """The sums in API.md's order, right-aligned, each with the currency; the true-up only when non-zero."""
    currency = invoice.currency
    rows = [("Subtotal", invoice.subtotal)]
    if invoice.commitment_true_up:
        rows.append(("Commitment true-up", invoice.commitment_true_up))
    rows += [(f"Tax ({_percent(invoice.tax_rate)})", invoice.tax), ("Total", invoice.total),
             ("Credits applied", invoice.credits_applied), ("Amount due", invoice.amount_due)]
    row_height, label_width, value_width = 6, 50, 40
    if pdf.get_y() + row_height * (len(rows) + 1) > pdf.page_break_trigger:
        pdf.add_page()
    left = MARGIN_MM + pdf.epw - label_width - value_width
    for label, amount in rows:
        due = label == "Amount due"
        if due:
            pdf.set_draw_color(*RULE)
            pdf.line(left, pdf.get_y() + 1, MARGIN_MM + pdf.epw, pdf.get_y() + 1)
            pdf.ln(2)
        pdf.set_font(pdf.typeface, "B" if due or label == "Total" else "", 11 if due else 9)
        pdf.set_x(left)
        pdf.cell(label_width, row_height, label)
        pdf.cell(value_width, row_height, f"{_money(amount)} {currency}", align="R", new_x="LMARGIN", new_y="NEXT")
