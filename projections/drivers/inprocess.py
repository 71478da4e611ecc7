"""The in-process runners: the documents follow the store's notification log, and the usage read
model follows the usage log.

Each batch of document writes commits with the position it reached, in one transaction, and the
next batch starts after it; the position row is locked for the batch, so runners in several
processes (the server, the CLI) never apply an event twice.
"""

import logging
import threading
from typing import Any

from projections import catalogue, documents, usage_readings
from projections.store import Database, lock_position, save_position
from projections.usage_log import UsageLog

NAME = "documents"
BATCH = 500
POLL_SECONDS = 0.2
log = logging.getLogger("tally.projections")


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


class UsageRunner:
    """Applies the usage log to the usage read model: each batch commits with the position it reached."""

    BATCH = 5_000

    def __init__(self, log: UsageLog, database: Database) -> None:
        self.log, self.database = log, database
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self) -> int:
        """Apply every entry logged so far; returns the position reached."""
        with self.lock:
            while True:
                with self.database.transaction(write=True) as cursor:
                    position = lock_position(cursor, usage_readings.IN_PROCESS)
                    entries = self.log.entries(position, self.BATCH)
                    if not entries:
                        return position
                    usage_readings.apply(cursor, entries)
                    save_position(cursor, usage_readings.IN_PROCESS, entries[-1].position)

    def follow(self) -> None:
        """Keep catching up in a thread: woken by this process's commits, polling for other processes'."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._follow, name="usage-runner", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.log.changed.wait(POLL_SECONDS)
            self.log.changed.clear()
            try:
                self.catch_up()
            except Exception:  # the store is away for a moment: the next round retries
                log.exception("usage runner: catch-up failed; retrying")
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
