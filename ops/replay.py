"""`tally replay`: bring read models up to date with the store, or rebuild them from scratch.

The read models are pure functions of the logs: the documents and the audit trail of the store's
notification log, the usage read model of the usage log. A replay without `--from-scratch` applies
what each model has not applied yet; with it, the model is emptied first and rebuilt from the first
event. The snapshots (of wallets, customers' charges and invoice numbers) are taken again from
their aggregates' events when named (`--model snapshots`). Readers see a partly rebuilt model meanwhile: rebuild while `tally serve` and `tally worker`
are stopped, or accept a few seconds of partial reads (nothing is lost: the logs are the truth).
"""

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from api.ledger import Ledger
from projections import audit
from projections.drivers.inprocess import NAME as DOCUMENTS
from projections.store import lock_position, save_position
from projections.usage_readings import PARTITIONS, position_name

USAGE, SNAPSHOTS = "usage", "snapshots"
MODELS = (DOCUMENTS, audit.NAME, USAGE, SNAPSHOTS)
Progress = Callable[[str, int, int], None]  # model, position reached, last position


@dataclass(frozen=True)
class Replayed:
    model: str
    positions: int  # log positions applied (the entries, but for gaps PostgreSQL may leave)
    rows: int  # rows the model holds afterwards (snapshots: aggregates)
    seconds: float


def replay(ledger: Ledger, models: Collection[str] = MODELS, from_scratch: bool = False,
           progress: Progress = lambda model, position, last: None) -> list[Replayed]:
    """Apply what the models have not applied (all of it, `from_scratch`), one log at a time."""
    done = []
    store_models = [name for name in (DOCUMENTS, audit.NAME) if name in models]
    if store_models:
        last = ledger.events_recorded()
        started, before = time.perf_counter(), _lowest(ledger, store_models)
        if from_scratch:
            ledger.runner.clear(store_models)
            before = 0
        reached = ledger.runner.catch_up(lambda position: progress("store", position, last))
        seconds = time.perf_counter() - started
        done += [Replayed(name, reached - before, _rows(ledger, name), seconds) for name in store_models]
    if USAGE in models:
        last = ledger.usage.last_position()
        started, before = time.perf_counter(), _lowest(ledger, [USAGE])
        if from_scratch:
            ledger.usage_runner.clear()
            before = 0
        reached = ledger.usage_runner.catch_up(lambda position: progress(USAGE, position, last))
        if ledger.distributed:  # the Faust workers go on from here, each partition's entries applied
            with ledger.database.transaction(write=True) as cursor:
                for partition in range(PARTITIONS):
                    lock_position(cursor, position_name(partition))
                    save_position(cursor, position_name(partition), reached)
        done.append(Replayed(USAGE, reached - before, _rows(ledger, USAGE), time.perf_counter() - started))
    if SNAPSHOTS in models:
        started = time.perf_counter()
        held = sorted({snapshot.originator_id for snapshot in ledger.wallets.snapshots_stored()})
        for n, aggregate_id in enumerate(held, 1):
            ledger.wallets.retake_snapshot(aggregate_id)
            progress(SNAPSHOTS, n, len(held))
        done.append(Replayed(SNAPSHOTS, len(held), len(held), time.perf_counter() - started))
    return done


def _lowest(ledger: Ledger, names: list[str]) -> int:
    """The lowest position these models have applied."""
    rows = ledger.database.query(f"SELECT name, position FROM tally_positions WHERE name IN "  # noqa: S608
                                 f"({','.join('?' * len(names))})", names)
    found = dict(rows)
    return min(int(found.get(name, 0)) for name in names)


TABLES = {DOCUMENTS: "tally_documents", audit.NAME: "tally_audit", USAGE: "tally_usage_readings"}
DEFAULT = (DOCUMENTS, audit.NAME, USAGE)  # what a replay with no --model catches up (snapshots never lag)


def _rows(ledger: Ledger, model: str) -> int:
    with ledger.database.transaction() as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {TABLES[model]}").one()  # noqa: S608 (a name of ours)
    return int(row[0]) if row else 0
