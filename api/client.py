"""The Tally Python SDK: `Client` and `AsyncClient` over one table of operations (`api/sender.py`
has `EventSender`, which batches usage in the background).

Amounts go out as decimal strings (`Decimal` is encoded in plain notation) and come back as the
strings Tally sends; any JSON number with a fraction is decoded as `Decimal`, never float. A refusal
is a `TallyError` read from the RFC 9457 problem+json body; network failures stay `httpx` errors.
"""

import contextlib
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Self
from urllib.parse import quote

import httpx
import msgspec
import orjson

__all__ = ["AsyncClient", "Client", "FieldError", "TallyError"]

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_BATCH = 10_000  # Tally's limit for POST /v1/events/batch
WRITES = ("POST", "PATCH")
log = logging.getLogger("tally.client")
_decoder = msgspec.json.Decoder(float_hook=Decimal)  # a JSON 0.10 is Decimal("0.10"), never a float


class FieldError(msgspec.Struct, frozen=True):
    field: str  # a path into the body: "prices[0].tiers[1].up_to"
    message: str


class _Problem(msgspec.Struct, frozen=True):
    title: str = ""
    detail: str = ""
    errors: list[FieldError] = []


_problem = msgspec.json.Decoder(_Problem)


class TallyError(Exception):
    """Tally refused a request (any 4xx or 5xx), as its problem+json body says."""

    def __init__(self, status: int, title: str, detail: str, errors: list[FieldError] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail = status, title, detail
        self.errors = errors or []
        self.retry_after = retry_after  # seconds, from a 429's or 503's Retry-After header

    @classmethod
    def from_response(cls, response: httpx.Response) -> "TallyError":
        """Read the problem body; a proxy's HTML error page still gives the status and some text."""
        try:
            problem = _problem.decode(response.content)
        except msgspec.DecodeError:
            problem = _Problem(detail=response.text[:500])
        title = problem.title or response.reason_phrase
        return cls(response.status_code, title, problem.detail, problem.errors, _retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when absent or bad."""
    text = response.headers.get("retry-after", "").strip()
    if text.isascii() and text.isdigit():
        return float(text)
    with contextlib.suppress(TypeError, ValueError):
        return max((parsedate_to_datetime(text) - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value, "f")  # plain notation: Tally refuses "2E-12" for an amount
    raise TypeError(f"{type(value).__name__} is not JSON: send amounts as Decimal or str")


def _query_value(value: object) -> str:
    if isinstance(value, datetime):
        assert value.tzinfo is not None, f"{value} has no offset: Tally times are UTC-aware"
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)  # group_by=model,region
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def _request(method: str, path: str, args: tuple[Any, ...], idempotency_key: str | None,
             fields: dict[str, Any]) -> dict[str, Any]:
    """The arguments of one httpx request: the path's {names} filled from `args` in order, then
    (POST/PATCH) the body: an optional mapping in `args` and the keyword fields over it. For GET and
    DELETE the keywords are the query (a trailing `_` is dropped: `from_=` is `from`)."""
    names = re.findall(r"{(\w+)}", path)
    writes = method in WRITES
    if not len(names) <= len(args) <= len(names) + writes:
        raise TypeError(f"{method} {path} takes {len(names)} path argument(s){' and a body' if writes else ''}")
    url = path.format_map({name: quote(str(arg), safe="") for name, arg in zip(names, args, strict=False)})
    if not writes:
        if idempotency_key is not None:
            raise TypeError(f"Idempotency-Key goes with POST and PATCH, not {method}")
        query = {name.rstrip("_"): _query_value(value) for name, value in fields.items() if value is not None}
        return {"method": method, "url": url, "params": query}
    body = {**(args[len(names)] if len(args) > len(names) else {}), **fields}
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return {"method": method, "url": url, "headers": headers, "content": orjson.dumps(body, default=_json_default)}


def _answer(response: httpx.Response) -> Any:
    """The decoded body of a 2xx answer; any other status is a TallyError."""
    if not response.is_success:
        raise TallyError.from_response(response)
    return _decoder.decode(response.content) if response.content else None


def _operation(method: str, path: str, summary: str) -> Callable[..., Any]:
    """One route as a client method; the sync client returns the answer, the async one a coroutine."""

    def call(self: "_Operations", *args: Any, idempotency_key: str | None = None, **fields: Any) -> Any:
        return self._send(_request(method, path, args, idempotency_key, fields))

    call.__doc__ = f"{summary}: {method} {path}"
    call.route = f"{method} {path}"  # type: ignore[attr-defined]  # checked against the server's route table
    return call


class _Operations:
    """Every route of the API so far, once. `Client` and `AsyncClient` differ only in how they send."""

    _http_type: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(self, base_url: str, api_key: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                   "User-Agent": "tally-python/0.1"}
        self._http: Any = self._http_type(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def _send(self, request: dict[str, Any]) -> Any:
        raise NotImplementedError  # Client and AsyncClient say how

    get_tenant = _operation("GET", "/v1/tenant", "The caller's tenant and its settings")
    change_tenant = _operation("PATCH", "/v1/tenant", "Change tenant settings")
    create_api_key = _operation("POST", "/v1/api-keys", "Create an API key (its secret is shown once)")
    list_api_keys = _operation("GET", "/v1/api-keys", "List API keys (prefix only)")
    get_api_key = _operation("GET", "/v1/api-keys/{id}", "Read an API key (prefix only)")
    revoke_api_key = _operation("DELETE", "/v1/api-keys/{id}", "Revoke an API key")
    create_meter = _operation("POST", "/v1/meters", "Create a meter")
    list_meters = _operation("GET", "/v1/meters", "List meters")
    get_meter = _operation("GET", "/v1/meters/{code}", "Read a meter by code")
    create_feature = _operation("POST", "/v1/features", "Create a feature")
    list_features = _operation("GET", "/v1/features", "List features")
    get_feature = _operation("GET", "/v1/features/{code}", "Read a feature by code")
    create_pricing_unit = _operation("POST", "/v1/pricing-units", "Create a pricing unit")
    list_pricing_units = _operation("GET", "/v1/pricing-units", "List pricing units")
    get_pricing_unit = _operation("GET", "/v1/pricing-units/{code}", "Read a pricing unit by code")
    create_plan = _operation("POST", "/v1/plans", "Create a plan")
    list_plans = _operation("GET", "/v1/plans", "List plans")
    get_plan = _operation("GET", "/v1/plans/{code}", "Read a plan by code")
    publish_plan_version = _operation("POST", "/v1/plans/{code}/versions", "Publish a new immutable plan version")
    list_plan_versions = _operation("GET", "/v1/plans/{code}/versions", "List a plan's versions")
    get_plan_version = _operation("GET", "/v1/plans/{code}/versions/{number}", "Read one version of a plan")
    create_customer = _operation("POST", "/v1/customers", "Create a customer")
    list_customers = _operation("GET", "/v1/customers", "List customers")
    get_customer = _operation("GET", "/v1/customers/{external_id}", "Read a customer")
    change_customer = _operation("PATCH", "/v1/customers/{external_id}", "Change a customer")
    list_children = _operation("GET", "/v1/customers/{external_id}/children", "List a customer's children")
    get_usage = _operation("GET", "/v1/customers/{external_id}/usage", "A customer's usage of one meter")
    send_event = _operation("POST", "/v1/events", "Ingest one usage event (202 once durable)")
    send_events = _operation("POST", "/v1/events/batch", "Ingest up to 10,000 usage events: events=[...]")
    void_events = _operation("POST", "/v1/events/void", "Take wrongly sent events out of the totals")
    create_subscription = _operation("POST", "/v1/subscriptions", "Subscribe a customer to a plan version")
    list_subscriptions = _operation("GET", "/v1/subscriptions", "List a customer's subscriptions: customer=...")
    get_subscription = _operation("GET", "/v1/subscriptions/{id}", "Read a subscription")
    amend_subscription = _operation("POST", "/v1/subscriptions/{id}/amendments", "Change the plan version")
    cancel_subscription = _operation("POST", "/v1/subscriptions/{id}/cancel", "Cancel: at='now' or 'period_end'")
    list_subscription_versions = _operation("GET", "/v1/subscriptions/{id}/versions", "The contract's history")
    get_upcoming_invoice = _operation("GET", "/v1/customers/{external_id}/upcoming-invoice",
                                      "The live draft of the current period's invoice")
    list_invoices = _operation("GET", "/v1/invoices", "List issued invoices: customer=..., status=...")
    get_invoice = _operation("GET", "/v1/invoices/{id}", "Read an invoice")
    get_invoice_as_of = _operation("GET", "/v1/customers/{external_id}/invoices/{id}",
                                   "Time travel: an invoice as it stood at as_of=...")
    get_invoice_pdf = _operation("GET", "/v1/invoices/{id}/pdf", "The invoice as a PDF (bytes)")
    finalize_invoice = _operation("POST", "/v1/invoices/{id}/finalize", "Finalize a draft")
    void_invoice = _operation("POST", "/v1/invoices/{id}/void", "Void a draft or an unpaid invoice")
    pay_invoice = _operation("POST", "/v1/invoices/{id}/pay", "Record a payment (default: all that is due)")
    create_credit_note = _operation("POST", "/v1/credit-notes", "Credit a finalized invoice: lines=[...] or amount")
    list_credit_notes = _operation("GET", "/v1/credit-notes", "List an invoice's credit notes: invoice_id=...")
    get_credit_note = _operation("GET", "/v1/credit-notes/{id}", "Read a credit note")
    check_entitlement = _operation("POST", "/v1/entitlements/check", "May the customer use a feature now?")
    override_entitlement = _operation("POST", "/v1/customers/{external_id}/entitlement-overrides",
                                      "Set a feature's limit, switch or value for one customer (until=...)")
    list_entitlements = _operation("GET", "/v1/customers/{external_id}/entitlements", "A customer's entitlements")
    create_wallet = _operation("POST", "/v1/wallets", "Open a wallet of credits for a customer")
    list_wallets = _operation("GET", "/v1/wallets", "List a customer's wallets: customer=...")
    get_wallet = _operation("GET", "/v1/wallets/{id}", "Read a wallet (as_of=... for a past instant)")
    grant_credits = _operation("POST", "/v1/wallets/{id}/grants", "Grant credits: amount, kind, expires_at?")
    top_up_wallet = _operation("POST", "/v1/wallets/{id}/topups", "Buy credits: an invoice; they land when paid")
    list_wallet_transactions = _operation("GET", "/v1/wallets/{id}/transactions", "A wallet's transactions")
    list_audit_events = _operation("GET", "/v1/audit/events",
                                   "Domain events as recorded: stream=, since=, until=, starting_after=<position>")


class Client(_Operations):
    """Blocking client (httpx.Client). Use as a context manager, or call close()."""

    _http_type = httpx.Client

    def _send(self, request: dict[str, Any]) -> Any:
        return _answer(self._http.request(**request))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncClient(_Operations):
    """asyncio client (httpx.AsyncClient): every operation is awaited. Use `async with`, or aclose()."""

    _http_type = httpx.AsyncClient

    async def _send(self, request: dict[str, Any]) -> Any:
        return _answer(await self._http.request(**request))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
