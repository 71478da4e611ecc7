"""Wallet operations: open a wallet, grant credits, read it (now or as it stood at ?as_of=), and its
transactions."""

from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError, FieldError
from api.http import (
    JSON,
    Call,
    Operation,
    customer_page,
    encoder,
    limit_of,
    query_moment,
)
from api.tenant import ADMIN, FINANCE, READERS
from domain.wallet import GrantSpec, TopUpSpec, WalletSpec
from projections.views import WalletSummary, private_id, public_id
from projections.wallets import TopUpView, TransactionView, WalletView

OWN = READERS | {"portal"}  # a portal key reads its own customer's wallets


def _wallet_id(call: Call) -> UUID:
    found = private_id("wallets", call.params["id"])
    if found is None:
        raise ApiError(404, f"no wallet {call.params['id']}")
    return found


def _own(call: Call, wallet: WalletView) -> WalletView:
    if call.role == "portal" and wallet.customer != call.customer:
        raise ApiError(404, f"no wallet {call.params['id']}")
    return wallet


async def _portal_owns(call: Call, wallet_id: UUID) -> None:
    """A portal key acts on its own customer's wallets only (404 for another's): the wallet's owner,
    read from the wallet itself, not from its priced view."""
    if call.role == "portal":
        wallet = await run_in_threadpool(call.ledger.wallets.wallet, call.tenant_id, wallet_id)
        if wallet.customer != call.customer:
            raise ApiError(404, f"no wallet {call.params['id']}")


async def create(call: Call) -> Response:
    wallet = await call.command(call.ledger.wallets.create, call.body)
    found = await run_in_threadpool(call.ledger.wallet, call.tenant_id, wallet.id)
    return Response(encoder.encode(found), 201, media_type=JSON)


async def read(call: Call) -> Response:
    found = await run_in_threadpool(call.ledger.wallet, call.tenant_id, _wallet_id(call), query_moment(call, "as_of"))
    return Response(encoder.encode(_own(call, found)), media_type=JSON)


async def listing(call: Call) -> Response:
    return await customer_page(call, "wallets")


async def grant(call: Call) -> Response:
    await call.command(call.ledger.grant, _wallet_id(call), call.body)
    found = await run_in_threadpool(call.ledger.wallet, call.tenant_id, _wallet_id(call))
    return Response(encoder.encode(found), 201, media_type=JSON)


async def top_up(call: Call) -> Response:
    await _portal_owns(call, _wallet_id(call))
    invoice = await call.command(call.ledger.top_up, _wallet_id(call), call.body.amount)
    found = await run_in_threadpool(call.ledger.wallet, call.tenant_id, _wallet_id(call))
    bought = next(t for t in found.topups if t.invoice_id == public_id("invoices", invoice.id))
    return Response(encoder.encode(bought), 201, media_type=JSON)


async def transactions(call: Call) -> Response:
    wallet_id = _wallet_id(call)
    await _portal_owns(call, wallet_id)
    after = call.request.query_params.get("starting_after")
    version = 0
    if after is not None:
        prefix, _, number = after.rpartition("_")
        if prefix != f"wtx_{wallet_id.hex}" or not (number.isascii() and number.isdigit()):
            raise ApiError(404, f"starting_after: no transaction {after!r} of this wallet",
                           [FieldError("starting_after", "names nothing in this list")])
        version = int(number)
    found, more = await run_in_threadpool(call.ledger.wallet_transactions, call.tenant_id, wallet_id, version,
                                          limit_of(call))
    return Response(encoder.encode({"data": found, "has_more": more}), media_type=JSON)


OPERATIONS = [
    Operation("POST", "/v1/wallets", create, ADMIN, "Open a wallet of credits for a customer", WalletSpec,
              WalletView, status=201),
    Operation("GET", "/v1/wallets", listing, OWN, "List a customer's wallets (?customer=)",
              response=WalletSummary, listing=True),
    Operation("GET", "/v1/wallets/{id}", read, OWN,
              "A wallet: balance and each grant's remaining credits, now or as it stood at ?as_of=",
              response=WalletView),
    Operation("POST", "/v1/wallets/{id}/grants", grant, FINANCE,
              "Grant credits (paid or promotional, expiring or not)", GrantSpec, WalletView, status=201),
    Operation("POST", "/v1/wallets/{id}/topups", top_up, FINANCE | {"portal"},
              "Buy credits: an invoice at the wallet's topup_conversion_rate; they land when it is paid", TopUpSpec,
              TopUpView, status=201),
    Operation("GET", "/v1/wallets/{id}/transactions", transactions, OWN,
              "Every grant, debit and expiry of a wallet, oldest first, with the balance after each",
              response=TransactionView, listing=True),
]
