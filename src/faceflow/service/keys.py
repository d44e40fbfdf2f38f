"""API keys: stored hashed (scrypt, a salt per key), compared in constant time, with a scope and galleries.

A key reads ``ff_<id>_<secret>``: ``id`` (12 hex digits) finds its row, ``secret`` (32 random bytes,
URL-safe base64) is checked against the row's scrypt hash. Only the hash and the salt are stored;
the key itself is shown once, when it is made. Scopes are ordered: ``read`` (analyse, verify, embed,
identify, list and export galleries) < ``write`` (also create and delete galleries, enrol, delete
faces and subjects) < ``admin`` (every gallery, whatever its list says). ``galleries`` is the list of
gallery names the key may touch, or ``None`` for all of them.

A key's scrypt check runs once per process and key: after it succeeded, a SHA-256 of the secret is
kept in memory and later requests compare against that (constant time as well), while the key's
row is read on each request, so that a revocation by ``faceflow keys revoke`` (another process)
takes effect at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceflow.errors import ConfigError
from faceflow.gallery.store import check_name

SCOPES: tuple[str, ...] = ("read", "write", "admin")
"""Scopes, weakest first: a key may do what its scope and every weaker one allow."""

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
"""scrypt cost: 16 MiB of memory and some 40 ms of a core per check (OWASP's minimum for scrypt)."""

_KEY_RE = re.compile(r"^ff_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class ApiKey:
    """A key's public record (never its secret nor its hash)."""

    id: str
    name: str
    scope: str
    galleries: tuple[str, ...] | None
    created_at: float
    revoked_at: float | None = None

    def allows(self, scope: str) -> bool:
        """True when this key's scope covers ``scope``."""
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def may_touch(self, gallery: str) -> bool:
        """True when this key may use the gallery called ``gallery``."""
        return self.scope == "admin" or self.galleries is None or gallery in self.galleries

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scope": self.scope,
                "galleries": None if self.galleries is None else list(self.galleries),
                "created_at": self.created_at, "revoked_at": self.revoked_at}


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32,
                          maxmem=64 * 1024 * 1024)


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose from: {', '.join(SCOPES)}")
    return scope


class KeyStore:
    """API keys in a small SQLite file (created on first use, readable by its owner only)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (or create) the store at ``path``; a :class:`ConfigError` naming it when that is not
        possible (a folder, a file that is not a key store, no access), never a bare sqlite error."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._verified: dict[str, bytes] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the key store {self.path}: {exc}") from None
        try:
            if new:
                os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("""CREATE TABLE IF NOT EXISTS api_keys (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, galleries TEXT,
                salt BLOB NOT NULL, hash BLOB NOT NULL, created_at REAL NOT NULL, revoked_at REAL)""")
        except (OSError, sqlite3.Error) as exc:
            self._db.close()
            raise ConfigError(f"cannot open the key store {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    @staticmethod
    def _record(row: Sequence[Any]) -> ApiKey:
        kid, name, scope, galleries, created, revoked = row
        names = None if galleries is None else tuple(json.loads(galleries))
        return ApiKey(kid, name, scope, names, float(created), None if revoked is None else float(revoked))

    def create(self, name: str, scope: str = "read", galleries: Sequence[str] | None = None) -> tuple[str, ApiKey]:
        """A new key: ``(the key, to show once, its record)``."""
        check_scope(scope)
        if not name.strip():
            raise ConfigError("a key needs a name")
        kid = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        salt = secrets.token_bytes(16)
        # as the store keeps gallery names (trimmed, NFC), so that may_touch compares like with like
        listed = None if galleries is None else json.dumps(sorted({check_name(g, "gallery") for g in galleries}))
        now = time.time()
        with self._cursor() as cur:
            cur.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                        (kid, name.strip(), scope, listed, salt, _hash(secret, salt), now))
        return f"ff_{kid}_{secret}", self.get(kid)

    def get(self, key_id: str) -> ApiKey:
        with self._cursor() as cur:
            row = cur.execute("SELECT id, name, scope, galleries, created_at, revoked_at FROM api_keys WHERE id = ?",
                              (key_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no API key with id {key_id!r}")
        return self._record(row)

    def list(self) -> list[ApiKey]:
        with self._cursor() as cur:
            rows = cur.execute("SELECT id, name, scope, galleries, created_at, revoked_at FROM api_keys "
                               "ORDER BY created_at").fetchall()
        return [self._record(r) for r in rows]

    def active_count(self) -> int:
        with self._cursor() as cur:
            return int(cur.execute("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL").fetchone()[0])

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key by its id (the ``id`` part of the key, as ``faceflow keys list`` shows it)."""
        self.get(key_id)
        with self._cursor() as cur:
            cur.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (time.time(), key_id))
        return self.get(key_id)

    def authenticate(self, key: str, *, cached_only: bool = False) -> ApiKey | None:
        """The record of a valid, unrevoked ``key``; ``None`` for anything else. With ``cached_only`` a key
        this process has not verified yet is ``None`` without its scrypt check (the service's answer to an
        address that sent too many bad keys: keys already in use there go on working, at no cost)."""
        m = _KEY_RE.match(key)
        if m is None:
            return None
        kid, secret = m.groups()
        with self._cursor() as cur:
            row = cur.execute("SELECT id, name, scope, galleries, created_at, revoked_at, salt, hash FROM api_keys "
                              "WHERE id = ?", (kid,)).fetchone()
        if row is None or row[5] is not None:
            return None
        salt, stored = bytes(row[6]), bytes(row[7])
        fast = hashlib.sha256(salt + secret.encode()).digest()
        known = self._verified.get(kid + stored.hex())
        if known is not None:
            ok = hmac.compare_digest(known, fast)
        elif cached_only:
            return None
        else:
            ok = hmac.compare_digest(_hash(secret, salt), stored)
            if ok:
                self._verified[kid + stored.hex()] = fast
        return self._record(row[:6]) if ok else None
