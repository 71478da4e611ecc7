"""Idempotency-Key (IETF draft), per tenant, kept at least 35 days.

A first request claims the key; its response (status and body) is stored when it ends. A repeat
with the same method, path and body gets that response again; with another body, 422; while the
first still runs, 409. A claim abandoned by a crash (no response after `STALE_SECONDS`) is taken
over. A response of 5xx is not kept, so the client can retry.

Kept responses are sealed (AES-GCM) with a key derived from the caller's API key, so a response
holding a secret (a new API key) is never stored readable, and only the same caller can replay it.
"""

import hashlib
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from api.errors import ApiError, FieldError
from projections.store import Database

STALE_SECONDS = 60.0
KEEP_SECONDS = 40 * 24 * 3600.0
MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join((method.encode(), path.encode(), body))).hexdigest()


def _cipher(caller_secret: str) -> AESGCM:
    return AESGCM(hashlib.sha256(b"tally-idempotency\0" + caller_secret.encode()).digest())


def seal(caller_secret: str, key: str, body: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + _cipher(caller_secret).encrypt(nonce, body, key.encode())


def unseal(caller_secret: str, key: str, sealed: bytes) -> bytes:
    try:
        return _cipher(caller_secret).decrypt(sealed[:12], sealed[12:], key.encode())
    except InvalidTag:
        raise ApiError(422, "this Idempotency-Key was used by another API key",
                       [FieldError("Idempotency-Key", "already used by another API key")]) from None


class Idempotency:
    def __init__(self, database: Database) -> None:
        self.database = database

    def claim(self, tenant_id: str, key: str, fingerprint: str, caller_secret: str) -> tuple[int, bytes] | None:
        """None: go ahead (the key is now ours). Otherwise the first response to replay."""
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ApiError(422, "Idempotency-Key must be 1 to 255 characters",
                           [FieldError("Idempotency-Key", "must be 1 to 255 characters")])
        now = time.time()
        with self.database.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM tally_idempotency WHERE created_at < ?", (now - KEEP_SECONDS,))
            inserted = cursor.execute(
                "INSERT INTO tally_idempotency (tenant_id, key, fingerprint, status, body, created_at) "
                "VALUES (?, ?, ?, NULL, NULL, ?) ON CONFLICT (tenant_id, key) DO NOTHING",
                (tenant_id, key, fingerprint, now),
            ).rowcount
            if inserted:
                return None
            first, status, body, created_at = cursor.execute(
                "SELECT fingerprint, status, body, created_at FROM tally_idempotency WHERE tenant_id = ? AND key = ?",
                (tenant_id, key),
            ).one()
            if first != fingerprint:
                raise ApiError(422, "this Idempotency-Key was used with another request",
                               [FieldError("Idempotency-Key", "already used with a different body")])
            if status is not None:
                return int(status), unseal(caller_secret, key, bytes(body))
            if now - created_at < STALE_SECONDS:
                raise ApiError(409, "a request with this Idempotency-Key is still being processed")
            cursor.execute("UPDATE tally_idempotency SET created_at = ? WHERE tenant_id = ? AND key = ?",
                           (now, tenant_id, key))
            return None

    def finish(self, tenant_id: str, key: str, status: int, body: bytes, caller_secret: str) -> None:
        with self.database.transaction(write=True) as cursor:
            if status >= 500:
                cursor.execute("DELETE FROM tally_idempotency WHERE tenant_id = ? AND key = ?", (tenant_id, key))
            else:
                cursor.execute("UPDATE tally_idempotency SET status = ?, body = ? WHERE tenant_id = ? AND key = ?",
                               (status, seal(caller_secret, key, body), tenant_id, key))
