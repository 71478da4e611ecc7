"""OpenAPI 3.1, generated from the operations and their msgspec types (never written by hand)."""

from typing import Any, Generic, TypeVar

import msgspec

from api.errors import Problem
from api.http import Operation
from domain.money import schema_hook

T = TypeVar("T")
ERRORS = {
    "400": "Malformed JSON", "401": "No or bad API key", "403": "The key's role may not do this",
    "404": "Not found (also another tenant's object)", "409": "Conflicts with the current state",
    "413": "Body over its limit", "422": "Invalid: the errors name each field",
}


class Page(msgspec.Struct, Generic[T]):
    data: list[T]
    has_more: bool


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    names = [part[1:-1] for part in operation.path.split("/") if part.startswith("{")]
    found = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in names]
    if operation.listing:
        found += [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
            {"name": "starting_after", "in": "query", "schema": {"type": "string"}},
        ]
    if operation.method in ("POST", "PATCH"):
        found.append({"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}})
    return found


def document(operations: list[Operation]) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for operation in operations:
        types += [t for t in (operation.body, operation.response) if t is not None]
        if operation.listing:
            types.append(Page[operation.response])  # type: ignore[name-defined]
    refs, components = msgspec.json.schema_components(
        types, schema_hook=schema_hook, ref_template="#/components/schemas/{name}"
    )
    schemas = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        response_type = Page[operation.response] if operation.listing else operation.response  # type: ignore[name-defined]
        answer: dict[str, Any] = {"description": "OK"}
        if response_type is not None:
            answer["content"] = {"application/json": {"schema": schemas[response_type]}}
        elif operation.media != "application/json":
            answer["content"] = {operation.media: {"schema": {"type": "string", "format": "binary"}}}
        responses = {str(operation.status): answer}
        if operation.roles:
            problem = {"application/problem+json": {"schema": schemas[Problem]}}
            responses |= {code: {"description": text, "content": problem} for code, text in ERRORS.items()}
        spec: dict[str, Any] = {
            "summary": operation.summary, "operationId": _operation_id(operation),
            "parameters": _parameters(operation), "responses": responses,
            "security": [{"apiKey": []}] if operation.roles else [],
            "x-roles": sorted(operation.roles),
        }
        if operation.body is not None:
            spec["requestBody"] = {"required": True, "content": {"application/json": {"schema": schemas[operation.body]}}}
        paths.setdefault(operation.path, {})[operation.method.lower()] = spec
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tally", "version": "1", "description": "Event-sourced billing ledger: the HTTP contract."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}}},
    }


def _operation_id(operation: Operation) -> str:
    words = [part.strip("{}") for part in operation.path.split("/")[2:]]
    return operation.method.lower() + "_" + "_".join(words).replace("-", "_")
