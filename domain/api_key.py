"""An API key: a tenant's credential with one role. Only its SHA-256 is stored.

Format: `tly_<role letter>_<22 base62 chars ≈ 131 random bits><6-char checksum>`. The checksum
(CRC32 of the rest, base62) lets a typo be told apart from a revoked key without a look-up.
"""

import hashlib
import secrets
import zlib
from typing import Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.errors import Conflict

Role = Literal["admin", "finance", "readonly", "ingest", "portal"]
ROLES: tuple[Role, ...] = ("admin", "finance", "readonly", "ingest", "portal")
ROLE_LETTERS: dict[str, str] = {"admin": "a", "finance": "f", "readonly": "r", "ingest": "i", "portal": "p"}
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEYS = uuid5(NAMESPACE_URL, "https://tally.dev/api-keys")
PREFIX_LENGTH = 12  # what listings show: "tly_a_3fK9xQ"
OPERATOR_PREFIX_LENGTH = 4  # of an operator's own key (TALLY_API_KEY, maybe only 16 chars): show little


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    assert number == 0, "value wider than the field"
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), 6)


def new_secret(role: Role) -> str:
    body = f"tly_{ROLE_LETTERS[role]}_{_base62(secrets.randbelow(62**22), 22)}"  # 131 bits would not fit
    return body + _checksum(body)


def well_formed(secret: str) -> bool:
    """True when `secret` has Tally's key shape and its checksum holds."""
    if len(secret) != 34 or not secret.startswith("tly_") or secret[5] != "_":
        return False
    return _checksum(secret[:28]) == secret[28:]


def shown_prefix(secret: str) -> str:
    """What listings show of a key: the role and 6 random chars of a Tally key, 4 chars of any other."""
    return secret[:PREFIX_LENGTH] if well_formed(secret) else secret[:OPERATOR_PREFIX_LENGTH]


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRevoked(Conflict):
    def __init__(self, key_id: UUID) -> None:
        super().__init__(f"API key {key_id} is already revoked")


class ApiKey(Aggregate):
    class Issued(Aggregate.Created):
        tenant_id: UUID
        role: str
        customer: str | None
        prefix: str
        secret_hash: str

    class Revoked(Aggregate.Event):
        pass

    class Reinstated(Aggregate.Event):
        pass

    @staticmethod
    def create_id(secret_hash: str) -> UUID:
        return uuid5(KEYS, secret_hash)

    @event(Issued)
    def __init__(self, tenant_id: UUID, role: Role, customer: str | None, prefix: str, secret_hash: str) -> None:
        self.tenant_id, self.role, self.customer = tenant_id, role, customer
        self.prefix, self.secret_hash = prefix, secret_hash
        self.revoked = False

    def revoke(self) -> None:
        if self.revoked:
            raise KeyRevoked(self.id)
        self._revoked()

    @event(Revoked)
    def _revoked(self) -> None:
        self.revoked = True

    def reinstate(self) -> None:
        """Only for the operator's TALLY_API_KEY, which is kept an admin key on every start."""
        if self.revoked:
            self._reinstated()

    @event(Reinstated)
    def _reinstated(self) -> None:
        self.revoked = False
