"""Invoice operations: the upcoming invoice (the live draft of the current period's closing invoice),
issued invoices (read, list, finalize, void, pay)."""

from typing import TypeVar, get_args
from uuid import UUID

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError, FieldError
from api.http import JSON, Call, Operation, encoder, query_moment
from api.pdf import render
from api.tenant import FINANCE, READERS
from domain.billing import CreditNoteSpec, Payment, Status, Voiding
from domain.invoice import Invoice
from domain.money import decode_hook
from projections.views import (
    CreditNoteView,
    CustomerView,
    InvoiceSummary,
    TenantView,
    private_id,
    public_id,
)

T = TypeVar("T")

OWN = READERS | {"portal"}  # a portal key reads its own customer's invoices


async def upcoming(call: Call) -> Response:
    customer = call.params["external_id"]
    await call.document("customers", code=customer)  # 404 for an unknown customer
    named = call.request.query_params.get("subscription")
    subscription_id = None if named is None else private_id("subscriptions", named)
    if named is not None and subscription_id is None:
        raise ApiError(404, f"no subscription {named}")
    ledger = call.ledger
    found = await run_in_threadpool(ledger.upcoming_invoice, call.tenant_id, customer, subscription_id,
                                    ledger.now())
    return Response(encoder.encode(found), media_type=JSON)


def _invoice_id(call: Call) -> UUID:
    found = private_id("invoices", call.params["id"])
    if found is None:
        raise ApiError(404, f"no invoice {call.params['id']}")
    return found


async def _answer(call: Call, invoice_id: UUID) -> Response:
    found = await run_in_threadpool(call.ledger.issued_invoice, call.tenant_id, invoice_id)
    if call.role == "portal" and found.customer != call.customer:
        raise ApiError(404, f"no invoice {call.params['id']}")
    return Response(encoder.encode(found), media_type=JSON)


async def read(call: Call) -> Response:
    return await _answer(call, _invoice_id(call))


async def as_of(call: Call) -> Response:
    """A customer's invoice as it stood at `as_of`, from the events recorded by then."""
    moment = query_moment(call, "as_of")
    if moment is None:
        raise ApiError(422, "as_of: an RFC 3339 time with an offset", [FieldError("as_of", "required")])
    found = await run_in_threadpool(call.ledger.issued_invoice, call.tenant_id, _invoice_id(call), moment)
    if found.customer != call.params["external_id"]:
        raise ApiError(404, f"no invoice {call.params['id']} for customer {call.params['external_id']!r}")
    return Response(encoder.encode(found), media_type=JSON)


async def pdf(call: Call) -> Response:
    found = await run_in_threadpool(call.ledger.issued_invoice, call.tenant_id, _invoice_id(call))
    if call.role == "portal" and found.customer != call.customer:
        raise ApiError(404, f"no invoice {call.params['id']}")
    tenant = _view(await call.document("tenants", code=public_id("tenants", call.tenant_id)), TenantView)
    customer = _view(await call.document("customers", code=found.customer), CustomerView)
    body = await run_in_threadpool(render, found, tenant, customer)
    name = found.number or found.id
    return Response(body, media_type="application/pdf",
                    headers={"Content-Disposition": f'inline; filename="{name}.pdf"'})


def _view(response: Response, kind: type[T]) -> T:
    return msgspec.json.decode(response.body, type=kind, dec_hook=decode_hook)


async def listing(call: Call) -> Response:
    query = call.request.query_params
    customer, status = query.get("customer"), query.get("status")
    if call.role == "portal":
        customer = call.customer if customer in (None, call.customer) else ""  # another's: an empty list
    if status is not None and status not in get_args(Status):
        raise ApiError(422, f"status: one of {', '.join(get_args(Status))}", [FieldError("status", "unknown")])
    return await call.page("invoices", parent=customer, key="id", status=status)


async def finalize(call: Call) -> Response:
    await call.command(call.ledger.finalize, _invoice_id(call))
    return await _answer(call, _invoice_id(call))


async def void(call: Call) -> Response:
    body: Voiding = call.body
    await call.command(call.ledger.invoicing.void, _invoice_id(call), body.reason)
    return await _answer(call, _invoice_id(call))


async def pay(call: Call) -> Response:
    body: Payment = call.body
    await call.command(call.ledger.invoicing.pay, _invoice_id(call), body.amount)
    return await _answer(call, _invoice_id(call))


async def credit_note(call: Call) -> Response:
    body: CreditNoteSpec = call.body
    invoice_id = private_id("invoices", body.invoice_id)
    if invoice_id is None:
        raise ApiError(422, f"invoice_id: no invoice {body.invoice_id}", [FieldError("invoice_id", "no such invoice")])
    note = await call.command(call.ledger.invoicing.credit, invoice_id, body)
    return await call.document("credit_notes", id=note.id, status=201)


async def read_credit_note(call: Call) -> Response:
    found = private_id("credit_notes", call.params["id"])
    if found is None:
        raise ApiError(404, f"no credit note {call.params['id']}")
    return await call.document("credit_notes", id=found)


async def credit_notes(call: Call) -> Response:
    invoice = call.request.query_params.get("invoice_id")
    if invoice is None:
        raise ApiError(422, "invoice_id: list the credit notes of one invoice (?invoice_id=inv_...)",
                       [FieldError("invoice_id", "required")])
    return await call.page("credit_notes", parent=invoice, key="id")


OPERATIONS = [
    Operation("GET", "/v1/customers/{external_id}/upcoming-invoice", upcoming, READERS | {"portal"},
              "The live draft of the current period's closing invoice (?subscription= when several run)",
              response=Invoice),
    Operation("GET", "/v1/invoices", listing, OWN, "List issued invoices (?customer=, ?status=)",
              response=InvoiceSummary, listing=True),
    Operation("GET", "/v1/invoices/{id}", read, OWN, "Read an invoice (a draft is computed as of now)",
              response=Invoice),
    Operation("GET", "/v1/customers/{external_id}/invoices/{id}", as_of, OWN,
              "Time travel: the invoice as it stood at ?as_of= (from the events recorded by then)", response=Invoice),
    Operation("GET", "/v1/invoices/{id}/pdf", pdf, OWN, "The invoice as a PDF, with the tenant's legal details",
              media="application/pdf"),
    Operation("POST", "/v1/invoices/{id}/finalize", finalize, FINANCE,
              "Finalize a draft: the tenant's next number, and its amounts fixed", response=Invoice),
    Operation("POST", "/v1/invoices/{id}/void", void, FINANCE, "Void a draft or an unpaid invoice", Voiding,
              Invoice),
    Operation("POST", "/v1/invoices/{id}/pay", pay, FINANCE, "Record a payment (default: all that is due)",
              Payment, Invoice),
    Operation("POST", "/v1/credit-notes", credit_note, FINANCE,
              "Credit a finalized invoice, by lines or by amount (never more than is left)", CreditNoteSpec,
              CreditNoteView, status=201),
    Operation("GET", "/v1/credit-notes", credit_notes, READERS, "List an invoice's credit notes (?invoice_id=)",
              response=CreditNoteView, listing=True),
    Operation("GET", "/v1/credit-notes/{id}", read_credit_note, READERS, "Read a credit note",
              response=CreditNoteView),
]
