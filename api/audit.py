"""The audit trail over HTTP: a tenant's domain events as recorded, by position (finance, admin)."""

from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError, FieldError
from api.http import JSON, Call, Operation, encoder, limit_of, query_moment
from api.tenant import FINANCE
from projections.audit import Envelope
from projections.views import PREFIXES


def _stream(call: Call) -> UUID | None:
    """?stream=: an aggregate id, as the audit shows it (a UUID) or as the API does (`wal_…`, `inv_…`)."""
    text = call.request.query_params.get("stream")
    if text is None:
        return None
    prefix, _, hex_ = text.rpartition("_")
    try:
        if prefix and prefix not in PREFIXES.values():
            raise ValueError(prefix)
        return UUID(hex_)
    except ValueError:
        raise ApiError(422, "stream: an aggregate id (a UUID, or an id such as wal_…)",
                       [FieldError("stream", "not an aggregate id")]) from None


def _after(call: Call) -> int:
    text = call.request.query_params.get("starting_after", "0")
    if not (text.isascii() and text.isdigit()):
        raise ApiError(422, "starting_after: the position of the last event of the previous page",
                       [FieldError("starting_after", "a position (a whole number)")])
    return int(text)


async def events(call: Call) -> Response:
    since, until = query_moment(call, "since"), query_moment(call, "until")
    found, more = await run_in_threadpool(call.ledger.audit_events, call.tenant_id, _stream(call), since, until,
                                          _after(call), limit_of(call))
    return Response(encoder.encode({"data": found, "has_more": more}), media_type=JSON)


OPERATIONS = [
    Operation("GET", "/v1/audit/events", events, FINANCE,
              "The tenant's domain events as recorded, oldest first: ?stream=, ?since=, ?until= (occurred in "
              "[since, until)), pages by ?starting_after=<position>", response=Envelope, listing=True),
]
