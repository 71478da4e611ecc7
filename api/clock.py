"""Tally's own jobs, each every `interval` seconds in a thread of the process that runs them.

- The billing clock closes periods, finalizes due drafts and records grants' expiries.
- The debits charge wallets for the usage logged since their last pass.
- The busy hours: the ended hours of customers with many events are kept for their meters, so their
  reports and invoices need not read those events (projections/usage_hours.py).

Embedded, `tally serve` runs them; distributed, `tally worker` does. However many processes run
them, one at a time runs each job (a PostgreSQL advisory lock; on SQLite a lock file beside the
store), and each is idempotent anyway: an invoice's id derives from its period, numbers are taken
in the finalize's own save, and a debit records the usage position it covers.
"""

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from api.ledger import Ledger

log = logging.getLogger("tally.clock")
LOCK = "billing-clock"
DEBITS_LOCK = "wallet-debits"
HOURS_LOCK = "usage-hours"


def utc_now() -> datetime:
    return datetime.now(UTC)


class Periodic:
    """Runs `job` (which answers how much it changed) every `interval` seconds, one process at a time."""

    def __init__(self, ledger: Ledger, lock: str, interval: float, job: Callable[[], int], what: str) -> None:
        self.ledger, self.lock, self.interval, self.job, self.what = ledger, lock, interval, job, what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int | None:
        """One pass; None when another process holds the lock."""
        with self.ledger.database.exclusive(self.lock) as mine:
            if not mine:
                return None
            return self.job()

    def start(self) -> None:
        if self._thread is None and self.interval > 0:
            self._thread = threading.Thread(target=self._run, name=self.lock, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                changed = self.tick()
                if changed:
                    log.info("%s: %d %s", self.lock, changed, self.what)
            except Exception:  # the store is away for a moment, or a race was lost: the next pass retries
                log.exception("%s: pass failed; retrying", self.lock)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None


class BillingClock(Periodic):
    def __init__(self, ledger: Ledger, interval: float, now: Callable[[], datetime] = utc_now) -> None:
        super().__init__(ledger, LOCK, interval, self._pass, "invoices drafted or finalized, or grants expired")
        self.now = now

    def _pass(self) -> int:
        now = self.now()
        return self.ledger.close_periods(now) + self.ledger.expire_grants(now)


def busy_hours(ledger: Ledger, interval: float) -> Periodic:
    """The ended hours of busy customers kept for their meters (`Ledger.keep_busy_hours`)."""
    return Periodic(ledger, HOURS_LOCK, interval, ledger.keep_busy_hours, "busy customers' hours kept")


def debits(ledger: Ledger, interval: float) -> Periodic:
    """Wallet debits, one batch of the usage log after another until none is left, each pass."""

    def drain() -> int:
        read = 0
        while found := ledger.debit_usage():
            read += found
        return read

    return Periodic(ledger, DEBITS_LOCK, interval, drain, "usage entries debited")
