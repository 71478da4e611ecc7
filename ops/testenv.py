"""Run pytest against throwaway services: ``python -m ops.testenv [pytest args...]``.

Starts PostgreSQL and Tansu, exports TALLY_TEST_POSTGRES_URL and
TALLY_TEST_KAFKA_BOOTSTRAP, runs pytest in a subprocess and exits with its exit
code.  The services are stopped on every path, including SIGTERM and SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from ops import services

SIGNALS = (signal.SIGTERM, signal.SIGINT)
GRACE_SECONDS = 30


def _ignore_signals() -> None:
    """Once we are shutting down, let nothing interrupt the cleanup."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _on_signal(signum: int, _frame: object) -> None:
    _ignore_signals()
    raise SystemExit(128 + signum)  # unwinds the service context managers


def _in_terminal_foreground() -> bool:
    """True when a ^C typed in our terminal reaches our whole process group, pytest included."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
    return False


def _stop_pytest(proc: subprocess.Popen, exit_code: object) -> None:
    """Let pytest run its teardown (it handles SIGINT like ^C), then insist."""
    if proc.poll() is not None:
        return
    if exit_code != 128 + signal.SIGINT or not _in_terminal_foreground():
        proc.send_signal(signal.SIGINT)  # pytest has not seen this ^C yet; one is enough
    try:
        proc.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_pytest(args: list[str], env: dict[str, str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], env=env)
    try:
        return proc.wait()
    except BaseException as exc:
        _stop_pytest(proc, exc.code if isinstance(exc, SystemExit) else None)
        raise


def main(args: list[str]) -> int:
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    with services.postgres() as pg_url, services.tansu() as kafka:
        print(f"ops.testenv: PostgreSQL at {pg_url}, Tansu (Kafka) at {kafka}", flush=True)
        env = {**os.environ, "TALLY_TEST_POSTGRES_URL": pg_url, "TALLY_TEST_KAFKA_BOOTSTRAP": kafka}
        try:
            return _run_pytest(args, env)
        finally:
            _ignore_signals()  # the services are stopped next; do not cut that short


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
