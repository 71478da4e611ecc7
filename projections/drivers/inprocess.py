"""The in-process runners: the documents and the audit trail follow the store's notification log,
and the usage read model follows the usage log.

Each batch of read-model writes commits with the positions it reached, in one transaction, and the
next batch starts after them; the position rows are locked for the batch, so runners in several
processes (the server, the CLI) never apply an event twice.
"""

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from projections import catalogue, documents, usage_readings
from projections.audit import AuditTrail
from projections.background import Wake, end_with
from projections.board import Board
from projections.store import Database, lock_position, positions, save_position
from projections.usage_log import CHECKPOINT_PAGES, WRITER_CACHE_MIB, UsageLog, ring_of
from projections.views import Document

NAME = "documents"
BATCH = 500
POLL_SECONDS = 0.2
FOLLOWER_NICENESS = 10
CONTEXT = multiprocessing.get_context("spawn")  # never fork a process that holds threads and connections
log = logging.getLogger("tally.projections")


class DocumentModel:
    """The documents (`tally_documents`): one JSON body per aggregate the API reads. A batch's
    documents are read once and written once, at `flush`."""

    name = NAME
    tables = ("tally_documents", "tally_closed_periods")

    def __init__(self) -> None:
        self._batch: dict[tuple[str, str], tuple[Document | None, int, bool]] = {}  # (document, position, changed)

    def apply(self, cursor: Any, position: int, event: Any) -> None:
        collection = catalogue.collection_of(event)
        if collection is None:
            return
        key = (collection, str(event.originator_id))
        if key in self._batch:
            current, first, _ = self._batch[key]
        else:  # an aggregate's first event has no document to read yet
            current = None if event.originator_version == 1 else documents.load(cursor, *key)
            first = position
        changed = catalogue.reduce(current, event)
        if changed is not None and changed != current:
            self._batch[key] = (changed, first, True)
        elif key not in self._batch:
            self._batch[key] = (current, first, False)

    def flush(self, cursor: Any) -> None:
        changed = [(*key, document, first) for key, (document, first, dirty) in self._batch.items()
                   if dirty and document is not None]
        self._batch.clear()
        if changed:
            documents.save_many(cursor, changed)

    def discard(self) -> None:
        self._batch.clear()


class Runner:
    """Applies the notification log to the read models kept from it (the documents and the audit
    trail), each with its own position: one behind (a rebuilt one, or one added by an upgrade)
    catches up while the others skip what they have applied."""

    def __init__(self, recorder: Any, mapper: Any, database: Database, models: tuple[Any, ...] | None = None,
                 batch: int = BATCH, board: Board | None = None) -> None:
        """`models`: each with a `name` (its position's), `tables`, `apply(cursor, position, event)`,
        `flush(cursor)` (a batch's end) and `discard()` (a batch that failed); `batch`: notifications
        a transaction applies; `board`: where the documents' position is published after each commit
        (the embedded store; a runner with a board keeps the documents)."""
        self.recorder, self.mapper, self.database, self.board = recorder, mapper, database, board
        self.models = models if models is not None else (DocumentModel(), AuditTrail())
        self.batch = batch
        self.lock = threading.Lock()
        self._low = 0  # the lowest position the models had applied, at the last batch

    def catch_up(self, progress: Callable[[int], None] = lambda position: None, until: int | None = None,
                 batch: int | None = None) -> int:
        """Apply every event recorded so far (up to position `until`); returns the position reached.
        `progress(position)` after each batch (of `batch` notifications; default: the runner's)."""
        with self.lock:
            while True:
                try:
                    last = self._batch(until, batch or self.batch)
                except BaseException:
                    for model in self.models:
                        model.discard()  # nothing of the batch was written
                    raise
                if last is None:
                    return self._low
                if last > 0:
                    progress(last)

    def _batch(self, until: int | None, size: int) -> int | None:
        """Apply one batch. The notifications after what the models applied are read, decoded and
        reduced against the documents first, in a read transaction; then what changed is written in
        one short write transaction, unless another runner applied some in between (0: read again;
        documents change only with the positions, so unchanged positions mean unchanged documents).
        So another writer of the read models (a usage replay) works while this one computes. The
        position it reached (None: nothing to apply)."""
        applied = positions(self.database, [model.name for model in self.models])
        self._low = min(applied)
        notifications = self.recorder.select_notifications(start=self._low + 1, limit=size, stop=until)
        if not notifications:
            return None
        with self.database.transaction() as cursor:
            for notification in notifications:
                event = self.mapper.to_domain_event(notification)
                for model, position in zip(self.models, applied, strict=True):
                    if notification.id > position:
                        model.apply(cursor, notification.id, event)
        last = notifications[-1].id
        with self.database.transaction(write=True) as cursor:
            if [lock_position(cursor, model.name) for model in self.models] != applied:
                for model in self.models:
                    model.discard()
                return 0  # another runner applied some meanwhile
            for model, position in zip(self.models, applied, strict=True):
                model.flush(cursor)
                save_position(cursor, model.name, max(position, last))
        if self.board is not None:
            self.board.publish(NAME, last)
        return last

    def clear(self, names: Collection[str]) -> None:
        """Empty these read models and set them back to the start (`catch_up` rebuilds them)."""
        with self.lock, self.database.transaction(write=True) as cursor:
            for model in self.models:
                if model.name in names:
                    lock_position(cursor, model.name)
                    for table in model.tables:
                        cursor.execute(f"DELETE FROM {table}")  # noqa: S608 (a name of ours)
                    save_position(cursor, model.name, 0)
        if self.board is not None:
            self.board.sync()  # set back

    def applied(self) -> int:
        """The notification position the documents have applied: from the board when there is one
        (no query), else from the store."""
        return self.board.get(NAME) if self.board is not None else self.stored()

    def stored(self) -> int:
        """The notification position the documents have applied, as the store holds it."""
        return positions(self.database, [NAME])[0]


class UsageRunner:
    """Applies the usage log to the usage read model: each batch commits with the position it reached."""

    BATCH = 20_000

    def __init__(self, log: UsageLog, database: Database) -> None:
        self.log, self.database = log, database
        self.lock = threading.Lock()

    def catch_up(self, progress: Callable[[int], None] = lambda position: None, until: int | None = None,
                 batch: int | None = None) -> int:
        """Apply every entry logged so far (up to position `until`); returns the position reached.
        `progress(position)` after each batch (of `batch` entries; default BATCH). A batch is read
        and reduced outside the write transaction, then written in one, unless another runner got
        there in between (read again)."""
        with self.lock:
            while True:
                position = positions(self.database, [usage_readings.IN_PROCESS])[0]
                entries = self.log.entries(position, batch or self.BATCH)
                if until is not None:
                    entries = [entry for entry in entries if entry.position <= until]
                if not entries:
                    return position
                puts, deletes = usage_readings.reduce(entries)
                with self.database.transaction(write=True) as cursor:
                    if lock_position(cursor, usage_readings.IN_PROCESS) != position:
                        continue  # another runner applied some meanwhile
                    usage_readings.write(cursor, puts, deletes)
                    save_position(cursor, usage_readings.IN_PROCESS, entries[-1].position)
                progress(entries[-1].position)

    def clear(self) -> None:
        """Empty the usage read model and set it back to the start, the Faust workers' partitions too
        (`catch_up` rebuilds it)."""
        with self.lock, self.database.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM tally_usage_readings")
            cursor.execute("DELETE FROM tally_usage_hours")
            cursor.execute("DELETE FROM tally_usage_busy")
            cursor.execute("DELETE FROM tally_positions WHERE name = ? OR name LIKE ?",
                           (usage_readings.IN_PROCESS, f"{usage_readings.IN_PROCESS}:%"))



def follow(views_url: str, usage_url: str, changed: Wake, parent: int) -> None:
    """The usage runner's loop, in a process of its own (see `spawn`): woken by the server's commits,
    polling for other processes'; it ends with the server."""
    end_with(parent)
    os.nice(FOLLOWER_NICENESS)  # answers first: reads count the log's tail, so the model may trail a moment
    views = Database(views_url, durable=False)
    # like the usage log's writer: the readings' key takes rows all over its index, so a page cache
    # keeps its pages and a checkpoint every 80 MiB of WAL writes a page many commits changed once
    # (measured at 10,000 events/s: 0.22-0.24 -> 0.13-0.15 cores)
    views.tune(WRITER_CACHE_MIB, CHECKPOINT_PAGES)
    usage = Database(usage_url)
    runner = UsageRunner(UsageLog(usage, recent=ring_of(usage)), views)  # reads the entries from the ring
    while True:
        changed.wait(POLL_SECONDS)
        try:
            runner.catch_up()
        except Exception:  # the store is away for a moment: the next round retries
            log.exception("usage runner: catch-up failed; retrying")
            time.sleep(1)


def spawn(views_url: str, usage_url: str, changed: Wake) -> multiprocessing.process.BaseProcess:
    """Run the usage runner beside the server, in its own process: it applies each event again, and
    in the server's process it would take the GIL from ingestion (measured: 66K events/s with it in
    a thread, 127K without it)."""
    process = CONTEXT.Process(target=follow, args=(views_url, usage_url, changed, os.getpid()),
                              name="tally-usage-runner", daemon=True)
    process.start()
    return process
