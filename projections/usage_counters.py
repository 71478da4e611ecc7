"""Entitlement counters: each watched customer's use of a meter in a reset window, kept in memory
and brought up to date from the usage log at every read: a check reads where the log ends (from
shared memory on the embedded store, projections/board.py) and, only when it moved, its own entries.

A counter starts from the customer's readings (the read model plus the log's tail) up to the
position its customer's entries are counted to, and from the kept hours holding only entries up to
there (projections/usage_hours.py `window`), then adds each later log entry of its customer, event
name and window. So it counts every event acknowledged before the read (DESIGN.md
"Freshness"), once: the log holds each event once, in position order (PostgreSQL makes positions
visible in order). A void of a watched customer drops its counters, which are then counted afresh.
A weighted_sum is never kept running (its value needs every reading's neighbours).

Each process keeps its own counters; they are a cache of the log, never written anywhere, so
several servers each follow the same log. On the embedded store the entries come from memory: whoever
commits a group of usage rows copies it to the ring of recent entries (projections/recent.py) before
anyone is told, so a check after a batch, whichever process took it, reads nothing from the log (under
load any store call from the event loop waits milliseconds for the GIL). What has no record there (a
void, a group with duplicates, every write on PostgreSQL) is read from the log: a serving process
follows it in the background (`start`), a hundred entries under the lock at a time, and a check reads
only its own customer's entries the follower has not added yet (a range of positions the store
filters); when the follower is more than SCAN_LIMIT entries behind, the check catches everyone up
once instead (every check scanning the same long stretch costs more). Memory is bounded: past
WATCH_LIMIT customers, all counters are dropped and counted afresh as checks come.
"""

import contextvars
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from decimal import Decimal

import msgspec

from domain.meter import MeterSpec
from domain.metering import Reading, Running, matches
from projections.background import Repeating
from projections.recent import Reader, Recent
from projections.usage_log import Row, UsageLog

FOLLOW_SECONDS = 0.005  # the background follower's pause between looks at the log
FOLLOW_CHUNK = 100  # entries added under the lock at once
# a check reads its own customer's entries when the follower is at most this far behind (a few batches: with 300,
# a check right after a batch of 1,000 added everybody's entries itself, holding up the requests behind it)
SCAN_LIMIT = 5_000
FOLLOW_LIMIT = 20_000  # entries read per catch-up; a log further ahead drops the counters instead
WATCH_LIMIT = 100_000  # customers with counters in one process
Window = tuple[str, int, int]  # meter code, start and end of the window (µs)
# tenant, customer, meter, start, end, seen -> what a window begins from: a state of entries up to `seen`, and
# readings (those up to `seen` count)
ReadingsOf = Callable[[str, str, MeterSpec, int, int, int], tuple[Running, list[Reading]]]
# tenant, customers, event names, start, end -> each customer's readings by event name
ReadingsOfMany = Callable[[str, list[str], list[str], int, int], Mapping[str, Mapping[str, Iterable[Reading]]]]
OWN = "position, event_name, timestamp_us, event_id, properties, kind"  # a check's own entries
_properties = msgspec.json.Decoder(dict)
_BARE: dict = {}
# set while a check runs on the event loop (api/http.py `Call.quick`): a window's first read is not made there
QUICK: contextvars.ContextVar[bool] = contextvars.ContextVar("tally_quick", default=False)


class Slow(Exception):
    """A counter must begin from its readings, which takes long: not on the event loop (see `QUICK`)."""


class _Watched:
    __slots__ = ("by_name", "counters", "stamp", "through")

    def __init__(self, position: int) -> None:
        self.stamp = position  # the position of its latest entry seen, or where watching began
        self.through = position  # its entries up to here are counted (the process may have followed further)
        self.counters: dict[Window, tuple[MeterSpec, Running]] = {}
        self.by_name: dict[str, list[tuple[int, int, MeterSpec, Running, bool]]] = {}  # what `_add` reads

    def keep(self, counters: dict[Window, tuple[MeterSpec, Running]]) -> None:
        """These counters, and by event name: (start, end, meter, counter, whether it reads properties)."""
        self.counters, self.by_name = counters, {}
        for (_, start_us, end_us), (meter, running) in counters.items():
            reads = meter.field is not None or bool(meter.filters)
            self.by_name.setdefault(meter.event_name, []).append((start_us, end_us, meter, running, reads))

    def add(self, position: int, name: str, timestamp_us: int, event_id: str, properties: bytes | str,
            kind: str) -> None:
        """Count one log entry of this customer (a void drops the counters: they are counted afresh)."""
        self.stamp = position
        if kind == "void":
            self.keep({})
            return
        reading = None
        for start_us, end_us, meter, running, reads in self.by_name.get(name, ()):
            if start_us <= timestamp_us < end_us:
                if not reads:  # a count without filters: the event itself is all it needs
                    running.add(Reading(timestamp_us, position, _BARE, event_id))
                    continue
                reading = reading or Reading(timestamp_us, position, _properties.decode(properties), event_id)
                if matches(meter, reading):
                    running.add(reading)


def _begin(watched: _Watched, meter: MeterSpec, start_us: int, end_us: int, readings: Iterable[Reading],
           upto: int, base: Running | None = None) -> tuple[MeterSpec, Running]:
    """A counter of the meter's window from its readings up to position `upto` (on top of `base`, a state
    of entries up to there): every entry of the customer the other counters have counted or been given
    (read after them: they hold every one up to there); the later ones come as they are followed.
    Kept; the meter's past windows go."""
    running = base or Running(meter)
    for reading in readings:
        if reading.position <= upto and matches(meter, reading):
            running.add(reading)
    found = (meter, running)
    watched.keep({**{key: value for key, value in watched.counters.items()
                     if key[0] != meter.code or key[2] > start_us}, (meter.code, start_us, end_us): found})
    return found


class UsageCounters:
    def __init__(self, log: UsageLog, readings_of: ReadingsOf) -> None:
        """`readings_of(tenant, customer, meter, start_us, end_us, seen)`: what the customer's window of
        the meter begins from when its entries are counted up to position `seen`: a state of entries up
        to `seen` (kept hours), and the readings of the rest of the window, every acknowledged one (the
        read model and the log's tail)."""
        self.log, self.readings_of = log, readings_of
        self._lock = threading.Lock()
        self._ring = Reader(log.recent) if log.recent is not None else None
        self._position = log.last_position()
        self._watched: dict[tuple[str, str], _Watched] = {}
        self._follower = Repeating("usage-counters", self.follow)
        unindexed = "" if log.database.postgres else "+"  # SQLite: scan the position range, not the customer's rows
        self._own = (f"FROM tally_usage WHERE position > ? AND position <= ? AND {unindexed}tenant_id = ? "
                     f"AND {unindexed}customer = ? ORDER BY position")

    def start(self, every: float = FOLLOW_SECONDS) -> None:
        """Follow the log in a background thread too, until `stop`."""
        self._follower.start(every)

    def stop(self) -> None:
        self._follower.stop()

    def used(self, tenant: str, customer: str, meter: MeterSpec, start_us: int, end_us: int,
             last: int | None = None) -> Decimal:
        """The meter's value over [start_us, end_us) for the customer, counting every event logged (up to
        `last` at least, when the caller read where the log ends).

        A window not counted yet begins from the customer's readings, read without the lock (a customer
        with a million events takes seconds: other checks go on meanwhile); on the event loop (`QUICK`)
        that read is not made here: `Slow` tells the caller to ask again from a thread."""
        window = (meter.code, start_us, end_us)
        with self._lock:
            watched = self._watch(tenant, customer, last)
            if (found := watched.counters.get(window)) is not None:
                return found[1].value
            seen = max(watched.through, self._position)  # its entries counted or followed, up to here
        if QUICK.get():
            raise Slow(f"{customer}: the counter of {meter.code} from {start_us} begins from its readings")
        base, readings = self.readings_of(tenant, customer, meter, start_us, end_us, seen)
        with self._lock:
            if self._watched.get((tenant, customer)) is watched:  # else dropped meanwhile: counted afresh below
                if (found := watched.counters.get(window)) is None:
                    found = self._begin_after_read(tenant, customer, watched, meter, (start_us, end_us),
                                                   (base, readings), seen)
                if found is not None:
                    return found[1].value
            watched = self._watch(tenant, customer, last)  # rare (a void, the counters dropped): under the lock
            if (found := watched.counters.get(window)) is None:
                upto = max(watched.through, self._position)
                base, readings = self.readings_of(tenant, customer, meter, start_us, end_us, upto)
                found = _begin(watched, meter, start_us, end_us, readings, upto, base)
            return found[1].value

    def _begin_after_read(self, tenant: str, customer: str, watched: _Watched, meter: MeterSpec,
                          window: tuple[int, int], read: tuple[Running, list[Reading]],
                          seen: int) -> tuple[MeterSpec, Running] | None:
        """Begin a window from what was read (without the lock) after its customer's entries were counted
        up to `seen`: a state and the readings up to `seen`, then the customer's entries followed since,
        from the log (the lock held). None if one of those is a void (its counters are counted afresh)."""
        (start_us, end_us), upto, (base, readings) = window, max(watched.through, self._position), read
        if watched.stamp <= seen:  # none of its entries followed during the read
            return _begin(watched, meter, start_us, end_us, readings, seen, base)
        since = []
        for position, name, timestamp_us, event_id, properties, kind in self.log.database.query_rows(
                OWN, self._own, (seen, upto, tenant, customer)):
            if kind == "void":
                return None
            if name == meter.event_name and start_us <= timestamp_us < end_us:
                since.append(Reading(timestamp_us, position, _properties.decode(properties), event_id))
        return _begin(watched, meter, start_us, end_us, [*(r for r in readings if r.position <= seen), *since], upto,
                      base)

    def prime(self, tenant: str, wanted: Mapping[str, Collection[tuple[MeterSpec, int, int]]],
              read: ReadingsOfMany, at_least: int = 0) -> int:
        """Begin the counters of these customers' windows (meter, start, end) not kept yet, the
        readings of many customers read at once for each window (`used` reads one customer's):
        `read(tenant, customers, event names, start_us, end_us)` gives each customer's by event name.
        Returns the position of the log they count up to (for `used`): where it was published, or
        `at_least` (a position committed) if further."""
        missing: dict[tuple[int, int], dict[str, tuple[_Watched, int, list[MeterSpec]]]] = {}
        with self._lock:
            last = max(self.log.published(), at_least)  # once for them all (on PostgreSQL a query)
            for customer, windows in wanted.items():
                watched = self._watch(tenant, customer, last)
                seen = max(watched.through, self._position)  # its entries counted or followed, up to here
                for meter, start_us, end_us in windows:
                    if (meter.code, start_us, end_us) not in watched.counters:
                        pending = missing.setdefault((start_us, end_us), {})
                        pending.setdefault(customer, (watched, seen, []))[2].append(meter)
        for (start_us, end_us), pending in missing.items():  # read without the lock: checks go on meanwhile
            names = sorted({meter.event_name for _, _, meters in pending.values() for meter in meters})
            found = read(tenant, list(pending), names, start_us, end_us)
            with self._lock:
                for customer, (watched, seen, meters) in pending.items():
                    if self._watched.get((tenant, customer)) is not watched or watched.stamp > seen:
                        continue  # dropped, or entries of it added meanwhile (not to this window): `used` begins it
                    for meter in meters:
                        if (meter.code, start_us, end_us) not in watched.counters:
                            _begin(watched, meter, start_us, end_us,
                                   found.get(customer, {}).get(meter.event_name, ()), seen)
        return last

    def stamp(self, tenant: str, customer: str) -> int:
        """A position that changes whenever the customer's usage does (a new entry or a void)."""
        with self._lock:
            return self._watch(tenant, customer).stamp

    def _watch(self, tenant: str, customer: str, last: int | None = None) -> _Watched:
        """The customer's counters, with every entry of its logged so far (up to `last`, when the caller
        read where the log ends) counted."""
        last = self.log.published() if last is None else last
        watched = self._watched.get((tenant, customer))
        if watched is None:
            if len(self._watched) >= WATCH_LIMIT:
                self._watched.clear()
            # nothing counted yet: its counters start from its readings up to here (the entries the process
            # has followed too: it may have followed entries committed but not published yet)
            position = max(last, self._position)
            if not self._watched:  # the first: nobody's counters had entries to add up to here
                self._position = position
            watched = self._watched[tenant, customer] = _Watched(position)
            return watched
        if last > self._position:
            self._from_recent(last)
        if last - self._position > SCAN_LIMIT:  # the follower is behind: catch everyone up once, here
            self._add(self._rows_after(self._position))
            if (tenant, customer) not in self._watched:  # far behind: every counter dropped, this one's too
                return self._watch(tenant, customer, last)  # counted afresh
        if last > watched.through:
            after = max(watched.through, self._position)  # what the follower added is counted
            if after < last:  # else the follower added them all: no query (a query's GIL hand-overs cost ms)
                for row in self.log.database.query_rows(OWN, self._own, (after, last, tenant, customer)):
                    watched.add(*row)
            watched.through = last
        return watched

    def follow(self) -> None:
        """Add the log's entries after the position followed to the watched customers' counters (the
        entries a check has counted already skipped), a chunk at a time: a check waits for a chunk
        at most, not for a batch."""
        if not self._watched:  # nobody's counters to add to (a server that only ingests): not even a look at
            return  # where the log ends (on PostgreSQL a query, every FOLLOW_SECONDS); the first watched moves on
        last = self.log.published()
        if last <= self._position:
            return
        with self._lock:
            self._from_recent(last)
            if self._position >= last:
                return
        rows = self._rows_after(self._position)
        if len(rows) == FOLLOW_LIMIT:
            with self._lock:
                self._add(rows)  # far behind: dropped, counted afresh
            return
        for first in range(0, len(rows), FOLLOW_CHUNK):
            with self._lock:
                self._add(rows[first:first + FOLLOW_CHUNK])
            time.sleep(0)  # a waiting check goes first

    def _from_recent(self, last: int) -> None:
        """Add the entries up to `last` from the shared ring of recent entries (the lock held), as far as
        it has them in order; the rest is read from the log."""
        if self._ring is None:
            return
        for first, end, payload in self._ring.after(self._position, last):
            if self._watched:  # (its entries up to the position followed are added already)
                self._add_from(self._position + 1, Recent.rows(payload)[self._position + 1 - first:])
            self._position = end

    def _add_from(self, position: int, rows: list[Row]) -> None:
        """Add these rows, none followed yet, at `position` and the next ones in order (the lock held)."""
        watched_of = self._watched.get
        for tenant, customer, event_id, name, timestamp_us, _, properties, _, _ in rows:
            if (watched := watched_of((tenant, customer))) is not None and position > watched.through:
                watched.add(position, name, timestamp_us, event_id, properties, "event")
            position += 1

    def _rows_after(self, position: int) -> list[tuple]:
        return self.log.database.query_rows(
            "position, tenant_id, customer, event_name, timestamp_us, event_id, properties, kind",
            "FROM tally_usage WHERE position > ? ORDER BY position LIMIT ?", (position, FOLLOW_LIMIT))

    def _add(self, rows: list[tuple]) -> None:
        """Add these entries (the lock held, in log order), skipping those added already (the
        follower's chunks read before a check caught everyone up) and those a check counted; FOLLOW_LIMIT
        of them (the log far ahead) drop the counters instead."""
        if len(rows) == FOLLOW_LIMIT:  # far behind: count afresh what is asked for next, from here
            self._watched.clear()
            self._position = max(self.log.last_position(), rows[-1][0])
            return
        watched_of, followed = self._watched.get, self._position
        for position, tenant, customer, *entry in rows:
            if position <= followed:  # added already: a check caught everyone up since these were read
                continue
            watched = watched_of((tenant, customer))
            if watched is not None and position > watched.through:
                watched.add(position, *entry)
        if rows and rows[-1][0] > followed:
            self._position = rows[-1][0]
