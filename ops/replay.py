"""`tally replay`: bring read models up to date with the store, or rebuild them from scratch.

The read models are pure functions of the logs: the documents and the audit trail of the store's
notification log, the usage read model of the usage log. A replay without `--from-scratch` applies
what each model has not applied yet; with it, the model is emptied first and rebuilt from the first
event. The snapshots (of wallets, customers' charges and invoice numbers) are taken again from
their aggregates' events when named (`--model snapshots`). Readers see a partly rebuilt model
meanwhile: rebuild while `tally serve` and `tally worker` are stopped, or accept a few seconds of
partial reads (nothing is lost: the logs are the truth).
"""

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from api.ledger import Ledger
from projections import audit
from projections.drivers.inprocess import CONTEXT, UsageRunner
from projections.drivers.inprocess import NAME as DOCUMENTS
from projections.store import Database, lock_position, positions, save_position
from projections.usage_log import UsageLog
from projections.usage_readings import PARTITIONS, position_name

AUDIT, USAGE, SNAPSHOTS = audit.NAME, "usage", "snapshots"
REPLAY_BATCH = 5_000  # notifications a replay applies in one transaction
USAGE_REPLAY_BATCH = 100_000  # usage-log entries (measured: 143K entries/s against 116K at 20,000)
MODELS = (DOCUMENTS, AUDIT, USAGE, SNAPSHOTS)
Progress = Callable[[str, int, int], None]  # model, position reached, last position


@dataclass(frozen=True)
class Replayed:
    model: str
    positions: int  # log positions applied (the entries, but for gaps PostgreSQL may leave)
    rows: int  # rows the model holds afterwards (snapshots: aggregates)
    seconds: float


def replay(ledger: Ledger, models: Collection[str] = MODELS, from_scratch: bool = False,
           progress: Progress = lambda model, position, last: None) -> list[Replayed]:
    """Apply what the models have not applied (all of it, `from_scratch`). The two logs are replayed
    at once: the usage log in a process of its own, the store's log here (each reads and decodes a
    batch before taking the write lock for it). Big batches, whose commits do not wait for the disk:
    a crash loses the last batches, which the next replay applies again."""
    with ledger.database.relaxed():
        return _replay(ledger, models, from_scratch, progress)


def _replay(ledger: Ledger, models: Collection[str], from_scratch: bool, progress: Progress) -> list[Replayed]:
    done, usage = [], None
    if USAGE in models:
        usage_last, usage_before = ledger.usage.last_position(), _lowest(ledger, [USAGE])
        if from_scratch:
            ledger.usage_runner.clear()
            usage_before = 0
        usage = CONTEXT.Process(target=_replay_usage, args=(ledger.views_url, ledger.usage_url, ledger.distributed),
                                name="tally-replay-usage")
        usage_started = time.perf_counter()
        usage.start()

    def watch(model: str, position: int, last: int) -> None:
        progress(model, position, last)
        if usage is not None:
            progress(USAGE, _lowest(ledger, [USAGE]), usage_last)

    store_models = [name for name in (DOCUMENTS, AUDIT) if name in models]
    if store_models:
        last = ledger.events_recorded()
        started, before = time.perf_counter(), _lowest(ledger, store_models)
        if from_scratch:
            ledger.runner.clear(store_models)
            before = 0
        reached = ledger.runner.catch_up(lambda position: watch("store", position, last), batch=REPLAY_BATCH)
        seconds = time.perf_counter() - started
        done += [Replayed(name, reached - before, _rows(ledger, name), seconds) for name in store_models]
    if usage is not None:
        while usage.is_alive():
            usage.join(0.2)
            progress(USAGE, _lowest(ledger, [USAGE]), usage_last)
        if usage.exitcode != 0:
            raise RuntimeError(f"the usage replay failed (exit {usage.exitcode}); run it again: it resumes")
        done.append(Replayed(USAGE, _lowest(ledger, [USAGE]) - usage_before, _rows(ledger, USAGE),
                             time.perf_counter() - usage_started))
    if SNAPSHOTS in models:
        started = time.perf_counter()
        held = sorted({snapshot.originator_id for snapshot in ledger.wallets.snapshots_stored()})
        for n, aggregate_id in enumerate(held, 1):
            ledger.wallets.retake_snapshot(aggregate_id)
            progress(SNAPSHOTS, n, len(held))
        done.append(Replayed(SNAPSHOTS, len(held), len(held), time.perf_counter() - started))
    return done


def _replay_usage(views_url: str, usage_url: str, distributed: bool) -> None:
    """The usage read model's replay, in its own process."""
    database = Database(views_url)
    log = UsageLog(database if usage_url == views_url else Database(usage_url))
    try:
        with database.relaxed():
            reached = UsageRunner(log, database).catch_up(batch=USAGE_REPLAY_BATCH)
            if distributed:  # the Faust workers go on from here, each partition's entries applied
                with database.transaction(write=True) as cursor:
                    for partition in range(PARTITIONS):
                        lock_position(cursor, position_name(partition))
                        save_position(cursor, position_name(partition), reached)
    finally:
        log.close()
        if log.database is not database:
            log.database.close()
        database.close()


def _lowest(ledger: Ledger, names: list[str]) -> int:
    """The lowest position these models have applied."""
    return min(positions(ledger.database, names))


TABLES = {DOCUMENTS: "tally_documents", AUDIT: "tally_audit", USAGE: "tally_usage_readings"}
DEFAULT = (DOCUMENTS, AUDIT, USAGE)  # what a replay with no --model catches up (snapshots never lag)


def _rows(ledger: Ledger, model: str) -> int:
    with ledger.database.transaction() as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {TABLES[model]}").one()  # noqa: S608 (a name of ours)
    return int(row[0]) if row else 0
