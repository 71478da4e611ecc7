"""The in-process runner: applies new events from the store's notification log to the documents.

Each batch of document writes commits with the position it reached, in one transaction, and the
next batch starts after it; the position row is locked for the batch, so runners in several
processes (the server, the CLI) never apply an event twice.
"""

import threading
from typing import Any

from projections import catalogue, documents
from projections.store import Database, lock_position, save_position

NAME = "documents"
BATCH = 500


class Runner:
    def __init__(self, recorder: Any, mapper: Any, database: Database) -> None:
        self.recorder, self.mapper, self.database = recorder, mapper, database
        self.lock = threading.Lock()

    def catch_up(self) -> int:
        """Apply every event recorded so far; returns the position reached."""
        with self.lock:
            while True:
                with self.database.transaction(write=True) as cursor:
                    position = lock_position(cursor, NAME)
                    notifications = self.recorder.select_notifications(start=position + 1, limit=BATCH)
                    for notification in notifications:
                        self._apply(cursor, notification)
                    if not notifications:
                        return position
                    save_position(cursor, NAME, notifications[-1].id)

    def _apply(self, cursor: Any, notification: Any) -> None:
        event = self.mapper.to_domain_event(notification)
        collection = catalogue.collection_of(event)
        if collection is None:
            return
        document_id = str(event.originator_id)
        current = documents.load(cursor, collection, document_id)
        changed = catalogue.reduce(current, event)
        if changed is not None and changed != current:
            documents.save(cursor, collection, document_id, changed, notification.id)
