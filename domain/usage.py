"""A usage event: one thing a customer did, as the tenant reports it. Too many to be aggregate
events, they are validated here, then appended to the usage log (de-duplicated, durable).

Properties carry strings, booleans, null and numbers; numbers are read exactly (integers as int,
others as Decimal, never through float), and numeric strings stay strings until a meter reads them.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from domain.codes import ExternalId

MAX_FUTURE = timedelta(minutes=5)
MAX_PROPERTIES = 100
MAGNITUDE = 30  # numbers between 1e-30 and 1e30 in size (or zero)
LARGEST = 10**MAGNITUDE

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
PropertyName = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class UsageEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, gc=False):
    event_id: EventId
    customer: ExternalId
    event_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    timestamp: Annotated[datetime, msgspec.Meta(tz=True)]
    properties: Annotated[dict[PropertyName, Any], msgspec.Meta(max_length=MAX_PROPERTIES)] = {}

    def __post_init__(self) -> None:
        for name, value in self.properties.items():
            _check_property(name, value)


def _check_property(name: str, value: Any) -> None:
    kind = type(value)  # the usual values, passed at once:
    if kind is str and len(value) <= 1000 or kind is int and -LARGEST < value < LARGEST:
        return
    if kind is bool or value is None:
        return
    if isinstance(value, (dict, list)):
        raise ValueError(f"properties.{name}: a property is a string, number, boolean or null")
    if isinstance(value, Decimal) and value and not -MAGNITUDE <= value.adjusted() <= MAGNITUDE:
        raise ValueError(f"properties.{name}: {value} is out of range")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LARGEST:
        raise ValueError(f"properties.{name}: {value} is out of range")
    if isinstance(value, str) and len(value) > 1000:
        raise ValueError(f"properties.{name}: at most 1000 characters")


def too_far_ahead(event: UsageEvent, now: datetime) -> bool:
    """An event time more than five minutes past `now` (clock skew allowed for) is refused."""
    return event.timestamp > now + MAX_FUTURE


class EventBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A batch body: each event is decoded alone, so one bad event is rejected alone."""

    events: list[msgspec.Raw]
