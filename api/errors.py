"""The one map from errors to RFC 9457 problem+json responses.

Refusals: Invalid 422, NotFound 404, Conflict 409. Decoding: malformed JSON 400, a value of the
wrong type or shape 422 naming the field (`prices[0].tiers[1].up_to`).
"""

import re
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from domain.errors import Conflict, Invalid, NotFound, Refusal


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []


class ApiError(Exception):
    """An error the API answers itself (auth, roles, limits, idempotency) with its status."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors or [], headers or {}


TITLES = {
    400: "Malformed request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 413: "Payload too large", 422: "Invalid request",
    429: "Too many requests", 500: "Internal error",
}
_encoder = msgspec.json.Encoder()
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED = re.compile(r"(?:unknown|required) field `(?P<name>[^`]+)`")


def problem(status: int, detail: str, errors: list[FieldError] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    title = TITLES.get(status, "Error")
    body = Problem(type=f"https://tally.dev/problems/{status}", title=title, status=status, detail=detail,
                   errors=errors or [])
    return Response(_encoder.encode(body), status, headers=headers, media_type="application/problem+json")


def field_error(error: msgspec.ValidationError, prefix: str = "") -> FieldError:
    """`Expected int - at $.prices[0].tiers[1].up_to` -> FieldError("prices[0].tiers[1].up_to", ...).

    A rule checked in `__post_init__` says `field: message`; its field is joined to the path."""
    match = _AT.match(str(error))
    assert match is not None
    message, path = match["message"], (match["path"] or "").lstrip(".")
    named = _NAMED.search(message)
    inner, sep, rest = message.partition(": ")
    if named:
        path = _join(path, named["name"])
    elif sep and re.fullmatch(r"[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*", inner):
        path, message = _join(path, inner), rest
    return FieldError(field=_join(prefix, path) or "body", message=message)


def _join(left: str, right: str) -> str:
    return f"{left}.{right}" if left and right and not right.startswith("[") else left + right


async def on_api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return problem(error.status, error.detail, error.errors, error.headers)


async def on_refusal(request: Request, error: Exception) -> Response:
    match error:
        case Invalid(field=field, message=message):
            return problem(422, str(error), [FieldError(field, message)])
        case NotFound():
            return problem(404, str(error))
        case Conflict():
            return problem(409, str(error))
    return problem(422, str(error))


async def on_validation(request: Request, error: Exception) -> Response:
    assert isinstance(error, msgspec.ValidationError)
    found = field_error(error)
    return problem(422, f"{found.field}: {found.message}", [found])


async def on_decode(request: Request, error: Exception) -> Response:
    return problem(400, f"the body is not valid JSON: {error}")


async def on_http(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return problem(error.status_code, str(error.detail), headers=dict(error.headers or {}))


HANDLERS: dict[Any, Any] = {
    ApiError: on_api_error,
    Refusal: on_refusal,
    msgspec.ValidationError: on_validation,
    msgspec.DecodeError: on_decode,
    HTTPException: on_http,
}
