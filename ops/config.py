"""Configuration, read once from the environment; a bad value stops Tally with a clear message."""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from domain.api_key import well_formed


class ConfigError(SystemExit):
    def __init__(self, message: str) -> None:
        super().__init__(f"tally: configuration error: {message}")


@dataclass(frozen=True)
class Config:
    data_dir: Path
    host: str
    port: int
    database_url: str
    api_key: str | None
    kafka_bootstrap: str | None
    relay_stall_seconds: float = 5.0  # the relay sends again when consumers stop this long behind it
    billing_interval_seconds: float = 60.0  # how often the billing clock closes periods
    debit_interval_seconds: float = 1.0  # how often wallets are debited for new usage
    workers: int = 1  # serving processes sharing the port (SO_REUSEPORT)
    ledger_consumers: tuple[str, ...] = ()  # consumers of tally.ledger / tally.alerts the relay resumes from


def load(environ: Mapping[str, str] = os.environ) -> Config:
    data_dir = Path(environ.get("TALLY_DATA_DIR", "./.tally")).resolve()
    port_text = environ.get("TALLY_PORT", "8000")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"TALLY_PORT must be a port number, not {port_text!r}")
    database_url = environ.get("TALLY_DATABASE_URL") or f"sqlite:///{data_dir / 'events.sqlite'}"
    if not database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(f"TALLY_DATABASE_URL must start with sqlite:/// or postgresql://, not {database_url!r}")
    workers_text = environ.get("TALLY_WORKERS", "1")
    if not workers_text.isdigit() or not 1 <= int(workers_text) <= 64:
        raise ConfigError(f"TALLY_WORKERS must be a whole number from 1 to 64, not {workers_text!r}")
    consumers = tuple(name.strip() for name in environ.get("TALLY_LEDGER_CONSUMERS", "").split(",") if name.strip())
    if any(not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) for name in consumers):
        raise ConfigError(f"TALLY_LEDGER_CONSUMERS must be comma-separated names (letters, digits, _ . -), "
                          f"not {environ['TALLY_LEDGER_CONSUMERS']!r}")
    api_key = environ.get("TALLY_API_KEY") or None
    if api_key is not None and (len(api_key) < 16 or any(ch.isspace() for ch in api_key)):
        raise ConfigError("TALLY_API_KEY must be at least 16 characters with no spaces")
    if api_key is not None and api_key.startswith("tly_") and not well_formed(api_key):
        # the API refuses a tly_ key whose checksum fails without looking it up: this one could never sign in
        raise ConfigError("TALLY_API_KEY starts with tly_ but is not a Tally key (its checksum fails)")
    return Config(
        data_dir=data_dir,
        host=environ.get("TALLY_HOST", "127.0.0.1"),
        port=int(port_text),
        database_url=database_url,
        api_key=api_key,
        kafka_bootstrap=environ.get("TALLY_KAFKA_BOOTSTRAP") or None,
        relay_stall_seconds=_seconds(environ, "TALLY_RELAY_STALL_SECONDS", 5.0),
        billing_interval_seconds=_seconds(environ, "TALLY_BILLING_INTERVAL_SECONDS", 60.0),
        debit_interval_seconds=_seconds(environ, "TALLY_DEBIT_INTERVAL_SECONDS", 1.0),
        workers=int(workers_text),
        ledger_consumers=consumers,
    )


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)  # a duration in seconds, not money
    except ValueError:
        value = -1
    if not 0 < value <= 3600:
        raise ConfigError(f"{name} must be a number of seconds between 0 and 3600, not {text!r}")
    return value
