"""The `tally` command line: serve, worker, relay, tenants, keys."""

import argparse
import contextlib
import gc
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from api.clock import BillingClock, Periodic, busy_hours, debits
from api.ledger import Ledger
from domain.aggregate import Actor
from domain.api_key import ROLES, ApiKey
from domain.errors import Refusal
from domain.money import trap_floats
from domain.periods import parse_instant
from domain.tenant import TenantSettings
from ops import config
from projections.background import end_with
from projections.documents import first_tenant
from projections.views import private_id, public_id

CLI = Actor("system:cli")
# a serving process hands the GIL over this often (Python: 5 ms): a background thread holding it keeps the
# event loop waiting less (a check's p99 under ingest: 1 ms better than 5 in 3 paired runs of 3; 0.25 ms better
# than or equal to 1 ms in 3 paired runs of 3, 10.1/19.8/10.6 against 10.6/80.4/53.6 ms; ingest unchanged)
SWITCH_SECONDS = 0.00025


def bootstrap(ledger: Ledger, api_key: str | None) -> None:
    """On first start, open the first tenant with an admin key; keep TALLY_API_KEY an admin key of it."""
    by = Actor("system:serve")
    tenant = first_tenant(ledger.database)
    if tenant is None:
        opened = ledger.command(ledger.tenants.open_tenant, by, TenantSettings(name="Default"))
        tenant = str(opened.id)
        if api_key is None:
            _, secret = ledger.command(ledger.tenants.issue_key, by, opened.id, "admin")
            print(f"Admin API key: {secret}", flush=True)
    if api_key is not None:  # the operator knows it: never echo a secret into the logs
        key = ledger.command(ledger.tenants.keep_admin_key, by, UUID(tenant), api_key)
        print(f"TALLY_API_KEY is admin key {public_id('api_keys', key.id)} of tenant "
              f"{public_id('tenants', UUID(tenant))}", flush=True)


def serve(settings: config.Config) -> None:
    """The API on TALLY_HOST:TALLY_PORT, with the billing clock and the wallet debits (embedded, or
    PostgreSQL without Kafka). With TALLY_WORKERS above 1, that many processes serve the port (the
    kernel spreads connections among them); this one alone runs the clock, the debits and the usage
    read model's follower."""
    ledger = Ledger(settings.database_url, distributed=settings.kafka_bootstrap is not None)
    try:
        bootstrap(ledger, settings.api_key)
    except Refusal as refusal:  # TALLY_API_KEY is another tenant's key, or not an admin key
        ledger.close()
        sys.exit(f"tally: TALLY_API_KEY: {refusal}")
    print(f"Tally listening on http://{settings.host}:{settings.port} (store: {_safe(settings.database_url)}"
          f"{f', {settings.workers} processes' if settings.workers > 1 else ''})", flush=True)
    listening = _listen(settings)  # before the others start: a port in use stops this one, with the reason
    context = multiprocessing.get_context("spawn")
    # not daemonic: a serving process starts one of its own to decode usage batches (api/usage.py); stopped below
    others = [context.Process(target=_serve_more, args=(settings,), name=f"tally-serve-{n}")
              for n in range(1, settings.workers)]
    for process in others:
        process.start()
    jobs = _jobs(ledger, settings)
    if not ledger.distributed:  # distributed, `tally worker` runs them
        for job in jobs:
            job.start()
    try:
        _run_api(ledger, listening, follow=True)
    finally:
        for job in jobs:
            job.stop()
        for process in others:
            process.terminate()  # SIGTERM: it finishes what it answers, then stops
        for process in others:
            process.join(30)
        ledger.close()


def _listen(settings: config.Config) -> socket.socket:
    """The API's socket; with several processes, each binds its own to the same port (SO_REUSEPORT)."""
    listening = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.workers > 1:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listening.bind((settings.host, settings.port))
    except OSError as error:
        listening.close()
        sys.exit(f"tally serve: cannot listen on {settings.host}:{settings.port}: {error.strerror}")
    listening.listen(2048)
    return listening


def _serve_more(settings: config.Config) -> None:
    """One more serving process (TALLY_WORKERS): the API only."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the first process stops us
    # the first process was killed outright: stop as it would have stopped us
    end_with(os.getppid(), lambda: os.kill(os.getpid(), signal.SIGTERM))
    ledger = Ledger(settings.database_url, distributed=settings.kafka_bootstrap is not None)
    try:
        _run_api(ledger, _listen(settings), follow=False)
    finally:
        ledger.close()


def _jobs(ledger: Ledger, settings: config.Config) -> list[Periodic]:
    """Tally's own jobs (api/clock.py): the busy hours are kept as often as the billing clock runs."""
    return [BillingClock(ledger, settings.billing_interval_seconds), debits(ledger, settings.debit_interval_seconds),
            busy_hours(ledger, settings.billing_interval_seconds)]


def _run_api(ledger: Ledger, listening: socket.socket, follow: bool) -> None:
    import uvicorn

    from api.app import create_app
    from api.protocol import OneWriteProtocol

    server = uvicorn.Server(uvicorn.Config(create_app(ledger, follow=follow), http=OneWriteProtocol,
                                           log_level="warning", access_log=False))
    sys.setswitchinterval(SWITCH_SECONDS)
    gc.collect()
    gc.freeze()  # what start-up made lives as long as the process: later collections need not scan it
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn shut down gracefully, then re-raised it
        server.run(sockets=[listening])


def _distributed(settings: config.Config, command: str) -> str:
    """The Kafka bootstrap servers; worker and relay need Kafka and a PostgreSQL store."""
    if settings.kafka_bootstrap is None:
        sys.exit(f"tally {command}: set TALLY_KAFKA_BOOTSTRAP (host:port of the Kafka brokers)")
    if not settings.database_url.startswith(("postgresql://", "postgres://")):
        sys.exit(f"tally {command}: set TALLY_DATABASE_URL to the PostgreSQL database `tally serve` uses")
    return settings.kafka_bootstrap


def worker(settings: config.Config) -> None:
    """Keep the usage read model from Kafka `tally.usage` (Faust; several workers share the partitions)."""
    from faust import Worker

    from projections.drivers.worker import create_worker

    bootstrap = _distributed(settings, "worker")
    ledger = Ledger(settings.database_url, distributed=True)
    jobs = _jobs(ledger, settings)  # one worker at a time runs each
    for job in jobs:
        job.start()
    print(f"Tally worker: {bootstrap} -> {_safe(settings.database_url)}", flush=True)
    try:
        app = create_worker(bootstrap, ledger.database, settings.data_dir / "faust")
        Worker(app, loglevel="WARNING").execute_from_commandline()
    finally:
        for job in jobs:
            job.stop()
        ledger.close()


def relay(settings: config.Config) -> None:
    """Publish the usage log to Kafka `tally.usage` (from what the workers applied), and the domain
    events to `tally.ledger` and `tally.alerts` (from what their consumers applied), until SIGTERM/SIGINT."""
    import asyncio
    import signal

    from gateways.kafka import UsageRelay
    from gateways.ledger import LedgerRelay

    bootstrap = _distributed(settings, "relay")
    ledger = Ledger(settings.database_url, distributed=True)

    async def run() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await asyncio.gather(
            UsageRelay(ledger.usage, ledger.database, bootstrap, stall_seconds=settings.relay_stall_seconds).run(stop),
            LedgerRelay(ledger, bootstrap, settings.ledger_consumers, stall_seconds=settings.relay_stall_seconds).run(
                stop))

    print(f"Tally relay: {_safe(settings.database_url)} -> {bootstrap}", flush=True)
    try:
        asyncio.run(run())
    finally:
        ledger.close()


def _safe(url: str) -> str:
    head, at, tail = url.rpartition("@")
    return f"{head.split('//')[0]}//***@{tail}" if at else url


def _tenant_id(text: str) -> UUID:
    found = private_id("tenants", text)
    if found is None:
        try:
            found = UUID(text)
        except ValueError:
            raise SystemExit(f"tally: {text!r} is not a tenant id (ten_...)") from None
    return found


def tenants_create(ledger: Ledger, args: argparse.Namespace) -> None:
    tenant = ledger.command(ledger.tenants.open_tenant, CLI, TenantSettings(name=args.name))
    _, secret = ledger.command(ledger.tenants.issue_key, CLI, tenant.id, "admin")
    print(f"Tenant: {public_id('tenants', tenant.id)}")
    print(f"Admin API key: {secret}")


def keys_create(ledger: Ledger, args: argparse.Namespace) -> None:
    key, secret = ledger.command(ledger.tenants.issue_key, CLI, _tenant_id(args.tenant), args.role, args.customer)
    print(f"Key id: {public_id('api_keys', key.id)}")
    print(f"API key: {secret}")


def keys_revoke(ledger: Ledger, args: argparse.Namespace) -> None:
    key_id = private_id("api_keys", args.id)
    if key_id is None:
        raise SystemExit(f"tally: {args.id!r} is not a key id (key_...)")
    key = ledger.tenants.repository.get(key_id) if key_id in ledger.tenants.repository else None
    if not isinstance(key, ApiKey):
        raise SystemExit(f"tally: no API key {args.id}")
    ledger.command(ledger.tenants.revoke_key, CLI, key.tenant_id, key_id)
    print(f"Revoked {args.id}")


@contextlib.contextmanager
def _progress_bar(verb: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr, a line per step: `progress(step, done, of)` (of 0: not known)."""
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(step: str, done: int, of: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(f"{verb} {step}", total=of or None)
            bar.update(tasks[step], completed=done)

        yield progress


def rebuild(ledger: Ledger, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from ops.replay import AUDIT, DEFAULT, DOCUMENTS, MODELS, USAGE, replay

    models = args.model or (MODELS if args.from_scratch else DEFAULT)
    with _progress_bar("replay") as progress:
        began = time.perf_counter()
        done = replay(ledger, models, args.from_scratch, progress)
        seconds = time.perf_counter() - began
    table = Table(title=f"tally replay{' --from-scratch' if args.from_scratch else ''}")
    for column in ("model", "positions applied", "rows", "seconds", "per second"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for found in done:
        rate = f"{found.positions / found.seconds:,.0f}" if found.seconds > 0 else "-"
        table.add_row(found.model, f"{found.positions:,}", f"{found.rows:,}", f"{found.seconds:.2f}", rate)
    Console().print(table)
    by_log = {"store" if found.model in (DOCUMENTS, AUDIT) else found.model: found.positions for found in done}
    total = by_log.get("store", 0) + by_log.get(USAGE, 0)  # each log once: both store models replay the same one
    print(f"Replayed {total:,} log entries in {seconds:.2f} s ({total / seconds if seconds else 0:,.0f} a second)")


def audit_verify(ledger: Ledger, args: argparse.Namespace) -> None:
    from rich.console import Console

    from ops.verify import verify

    console, found = Console(stderr=True), 0
    with _progress_bar("verify") as progress:
        for difference in verify(ledger, progress):
            found += 1
            print(f"{difference.model}\t{difference.key}\t{difference.detail}", flush=True)
    if found:
        console.print(f"tally audit verify: {found} difference(s); `tally replay --from-scratch` rebuilds read "
                      "models, `tally replay --model snapshots` the snapshots")
        sys.exit(1)
    console.print("tally audit verify: no differences (read models, snapshots and finalized invoices)")


def export_file(ledger: Ledger, args: argparse.Namespace) -> None:
    from ops.export import ExportError, export

    start, end = (_moment(text, name) for text, name in ((args.start, "--from"), (args.end, "--to")))
    if start and end and start >= end:
        raise SystemExit(f"tally export: --from ({args.start}) must be before --to ({args.end})")
    if not args.output.parent.is_dir():
        raise SystemExit(f"tally export: no folder {args.output.parent} to write {args.output.name} in")
    try:
        count = export(ledger, args.what, args.output, args.format, start, end,
                      _tenant_id(args.tenant) if args.tenant else None)
    except ExportError as error:
        args.output.unlink(missing_ok=True)
        raise SystemExit(f"tally export: {error}") from None
    print(f"Exported {count:,} {args.what} to {args.output} ({args.format})")


def _moment(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    moment = parse_instant(text)
    if moment is None:
        raise SystemExit(f"tally export: {name} must be an RFC 3339 time with an offset, such as 2026-01-01T00:00:00Z")
    return moment


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tally", description="Tally, the event-sourced billing ledger")
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API (embedded SQLite unless TALLY_DATABASE_URL is set)")
    commands.add_parser("worker", help="keep the read models from Kafka (needs TALLY_KAFKA_BOOTSTRAP)")
    commands.add_parser("relay", help="publish the usage log to Kafka (needs TALLY_KAFKA_BOOTSTRAP)")
    tenants = commands.add_parser("tenants", help="tenants").add_subparsers(dest="action", required=True)
    create = tenants.add_parser("create", help="open a tenant and print its first admin key")
    create.add_argument("name")
    create.set_defaults(run=tenants_create)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="issue a key and print it (shown once)")
    create.add_argument("--tenant", required=True, help="tenant id (ten_...)")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--customer", help="the customer's external_id (portal keys)")
    create.set_defaults(run=keys_create)
    revoke = keys.add_parser("revoke", help="revoke a key by id (key_...)")
    revoke.add_argument("id")
    revoke.set_defaults(run=keys_revoke)
    replaying = commands.add_parser("replay", help="apply what the read models have not applied yet, or rebuild them")
    replaying.add_argument("--from-scratch", action="store_true", help="empty the models first, then rebuild them")
    replaying.add_argument("--model", action="append", choices=("documents", "audit", "usage", "snapshots"),
                         help="only this model (repeatable; default: all)")
    replaying.set_defaults(run=rebuild)
    checks = commands.add_parser("audit", help="audit").add_subparsers(dest="action", required=True)
    checks.add_parser("verify", help="derive every read model, snapshot and finalized invoice again and compare "
                                     "(exit 1 on any difference)").set_defaults(run=audit_verify)
    exporting = commands.add_parser("export", help="invoices, usage or wallet transactions to CSV or Parquet")
    exporting.add_argument("--format", required=True, choices=("csv", "parquet"))
    exporting.add_argument("--what", required=True, choices=("invoices", "usage", "wallet-transactions"))
    exporting.add_argument("--from", dest="start", help="from this time (RFC 3339, included)")
    exporting.add_argument("--to", dest="end", help="up to this time (RFC 3339, excluded)")
    exporting.add_argument("--tenant", help="one tenant's (ten_...); default: every tenant's, with a tenant_id column")
    exporting.add_argument("--output", required=True, type=Path, help="the file to write")
    exporting.set_defaults(run=export_file)
    return root


SERVICES = {"serve": serve, "worker": worker, "relay": relay}


def main(argv: list[str] | None = None) -> None:
    trap_floats()
    args = parser().parse_args(argv)
    settings = config.load()
    if args.command in SERVICES:
        SERVICES[args.command](settings)
        return
    ledger = Ledger(settings.database_url, distributed=settings.kafka_bootstrap is not None)
    try:
        args.run(ledger, args)
    except Refusal as refusal:
        sys.exit(f"tally: {refusal}")
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
