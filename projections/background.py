"""Work done beside the requests: a thread repeating a task, and a helper process that ends with the
process that started it."""

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tally.projections")


class Repeating:
    """`work()` in a daemon thread every `every` seconds, from `start` until `stop`; a failure (the
    store away for a moment) is logged and retried a second later."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        self.name, self.work = name, work
        self._stopped, self._thread = threading.Event(), None

    def start(self, every: float) -> None:
        def run() -> None:
            while not self._stopped.wait(every):
                try:
                    self.work()
                except Exception:
                    log.exception("%s failed; retrying", self.name)
                    self._stopped.wait(1)

        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def end_with(parent: int, end: Callable[[], None] = lambda: os._exit(0)) -> None:
    """Call `end` (default: exit at once) when process `parent` is gone, from a daemon thread: a
    process it started is not stopped by the kernel when it is killed outright (SIGKILL)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        end()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
