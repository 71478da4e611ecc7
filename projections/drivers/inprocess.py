"""The in-process runners: the documents follow the store's notification log, and the usage read
model follows the usage log.

Each batch of document writes commits with the position it reached, in one transaction, and the
next batch starts after it; the position row is locked for the batch, so runners in several
processes (the server, the CLI) never apply an event twice.
"""

import logging
import multiprocessing
import os
import threading
import time
from typing import Any

from projections import catalogue, documents, usage_readings
from projections.store import Database, lock_position, save_position
from projections.usage_log import UsageLog

NAME = "documents"
BATCH = 500
POLL_SECONDS = 0.2
FOLLOWER_NICENESS = 10
CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that holds threads and connections
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

    def applied(self) -> int:
        """The notification position the documents have applied."""
        rows = self.database.query("SELECT position FROM tally_positions WHERE name = ?", (NAME,))
        return int(rows[0][0]) if rows else 0

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

    BATCH = 20_000

    def __init__(self, log: UsageLog, database: Database) -> None:
        self.log, self.database = log, database
        self.lock = threading.Lock()

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



def follow(views_url: str, usage_url: str, changed: Any, parent: int) -> None:
    """The usage runner's loop, in a process of its own (see `spawn`): woken by the server's commits,
    polling for other processes'; it ends with the server."""
    os.nice(FOLLOWER_NICENESS)  # answers first: reads count the log's tail, so the model may trail a moment
    runner = UsageRunner(UsageLog(Database(usage_url)), Database(views_url, durable=False))
    while os.getppid() == parent:
        changed.wait(POLL_SECONDS)
        changed.clear()
        try:
            runner.catch_up()
        except Exception:  # the store is away for a moment: the next round retries
            log.exception("usage runner: catch-up failed; retrying")
            time.sleep(1)


def spawn(views_url: str, usage_url: str, changed: Any) -> multiprocessing.process.BaseProcess:
    """Run the usage runner beside the server, in its own process: it applies each event again, and
    in the server's process it would take the GIL from ingestion (measured: 66K events/s with it in
    a thread, 127K without it)."""
    process = CONTEXT.Process(target=follow, args=(views_url, usage_url, changed, os.getpid()),
                              name="tally-usage-runner", daemon=True)
    process.start()
    return process
