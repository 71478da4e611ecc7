"""Values read from aggregates, kept in memory until one of those aggregates records an event.

The event store's notification log says what changed, so a command served by another process
counts too: each read first looks at how far the documents have applied the log (in shared memory
on the embedded store, projections/board.py; one small query on PostgreSQL)
and, when that moved, at the new notifications of the watched kinds of aggregate. Following the log
only as far as the documents have applied it, a value read from the documents is never kept past a
change they did not show yet. A value is dropped when an aggregate it
was read from changes, and every value when an aggregate of one of the `new_kinds` is created (a
new subscription, say, may concern any of them). Bounded: past LIMIT values, all are dropped.
"""

import threading
from collections.abc import Callable, Collection, Hashable
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.domain import CanInitAggregate, DomainEvent
from eventsourcing.persistence import ApplicationRecorder
from eventsourcing.utils import get_topic

V = TypeVar("V")
LIMIT = 100_000  # values kept
PAGE = 1_000  # notifications read at once; more than that since the last look drops every value


def topics_of(kinds: Collection[type], created_only: bool = False) -> set[str]:
    """The topics of the events these aggregates record (or only of those that create one)."""
    return {get_topic(value) for kind in kinds for value in vars(kind).values()
            if isinstance(value, type) and issubclass(value, CanInitAggregate if created_only else DomainEvent)}


class Memo:
    def __init__(self, recorder: ApplicationRecorder, applied: Callable[[], int], kinds: Collection[type],
                 new_kinds: Collection[type]) -> None:
        """`applied()`: the notification position the documents have applied."""
        self.recorder, self.applied = recorder, applied
        self.topics, self.created = tuple(topics_of(kinds)), topics_of(new_kinds, created_only=True)
        self._lock = threading.Lock()
        self._seen = applied()
        self._values: dict[Hashable, tuple[Any, Collection[UUID]]] = {}
        self._dependents: dict[UUID, set[Hashable]] = {}

    def get(self, key: Hashable, compute: Callable[[], tuple[V, Collection[UUID] | None]],
            valid: Callable[[V], bool] = lambda _: True) -> V:
        """The value kept for `key` (if `valid`), else `compute()`'s, which gives it and the ids of
        the aggregates it was read from (None: not to be kept)."""
        with self._lock:
            self._follow()
            found = self._values.get(key)
            if found is not None and valid(found[0]):
                return found[0]
            seen = self._seen
        value, sources = compute()
        with self._lock:
            if sources is not None and self._seen == seen:  # else a change since may concern it: not kept
                if len(self._values) >= LIMIT:
                    self._drop_all()
                self._values[key] = (value, sources)
                for source in sources:
                    self._dependents.setdefault(source, set()).add(key)
        return value

    def _follow(self) -> None:
        top = self.applied()
        if top <= self._seen:
            return
        found = self.recorder.select_notifications(self._seen + 1, PAGE, stop=top, topics=self.topics)
        if len(found) == PAGE or any(notification.topic in self.created for notification in found):
            self._drop_all()
        for notification in found:
            for key in self._dependents.pop(notification.originator_id, ()):
                self._values.pop(key, None)
        self._seen = top

    def _drop_all(self) -> None:
        self._values.clear()
        self._dependents.clear()
