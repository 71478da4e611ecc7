"""Tally's aggregate base: every event records who caused it and under which Idempotency-Key.

The application sets the actor for the duration of a command (`acting(actor)`); the base class
stamps it on each event as the command triggers it, so appliers never see it and replays never
re-read it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import eventsourcing.domain
import msgspec


class Actor(msgspec.Struct, frozen=True):
    """Who is acting: an API key id (or `system:<name>` for Tally's own jobs) and the request's key."""

    key_id: str
    idempotency_key: str | None = None


_actor: ContextVar[Actor | None] = ContextVar("actor", default=None)


@contextmanager
def acting(actor: Actor) -> Iterator[None]:
    token = _actor.set(actor)
    try:
        yield
    finally:
        _actor.reset(token)


def _stamp(kwargs: dict[str, Any]) -> dict[str, Any]:
    actor = _actor.get()
    assert actor is not None, "a command ran outside `acting(actor)`: its events would have no actor"
    return {**kwargs, "actor": actor.key_id, "idempotency_key": actor.idempotency_key}


class Aggregate(eventsourcing.domain.Aggregate):
    class Event(eventsourcing.domain.Aggregate.Event):
        actor: str
        idempotency_key: str | None

    class Created(Event, eventsourcing.domain.Aggregate.Created):
        pass

    def trigger_event(self, event_class: Any, **kwargs: Any) -> None:
        super().trigger_event(event_class, **_stamp(kwargs))

    @classmethod
    def _create(cls, event_class: Any, *, id: Any = None, **kwargs: Any) -> Any:  # noqa: A002
        return super()._create(event_class, id=id, **_stamp(kwargs))
