"""The billing clock: closes periods and finalizes due drafts, every `interval` seconds.

Embedded, `tally serve` runs it; distributed, `tally worker` does. However many run, one ticks at a
time (a PostgreSQL advisory lock; on SQLite a lock file beside the store), and a tick is idempotent
anyway: an invoice's id derives from its period, and numbers are taken in the finalize's own save.
"""

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from api.ledger import Ledger

log = logging.getLogger("tally.clock")
LOCK = "billing-clock"


def utc_now() -> datetime:
    return datetime.now(UTC)


class BillingClock:
    def __init__(self, ledger: Ledger, interval: float, now: Callable[[], datetime] = utc_now) -> None:
        self.ledger, self.interval, self.now = ledger, interval, now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> int | None:
        """One pass (invoices due, then grants whose time has come); how many changed, or None when
        another clock holds the lock."""
        with self.ledger.database.exclusive(LOCK) as mine:
            if not mine:
                return None
            now = self.now()
            return self.ledger.close_periods(now) + self.ledger.expire_grants(now)

    def start(self) -> None:
        if self._thread is None and self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="billing-clock", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                changed = self.tick()
                if changed:
                    log.info("billing clock: %d invoices drafted or finalized, or grants expired", changed)
            except Exception:  # the store is away for a moment: the next tick retries
                log.exception("billing clock: tick failed; retrying")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
