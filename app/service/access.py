"""Who may do what: API keys and their rights, without any web framework.

``XMODAL_API_KEYS`` keys are full administrators. ``XMODAL_API_KEYS_FILE`` names a JSON
file of keys scoped to collections::

    {"keys": [
      {"key": "a-key-of-16-or-more-chars", "collections": ["photos", "shop"], "access": "read"},
      {"key_sha256": "<hex digest of a key>", "collections": ["*"], "access": "write"},
      {"key": "another-long-key", "admin": true}
    ]}

``read`` opens searches, item reads, thumbnails and the collection's own reads; ``write``
adds uploads, deletes, index, duplicates and re-index jobs of those collections; ``admin``
adds creating and deleting collections, fine-tuning, evaluation, activation, rollback and
every job, on every collection. Keys are kept as SHA-256 digests only and compared with
``hmac.compare_digest`` against every configured key (no early exit), so the time taken
says nothing about which key matched. The file is read at start (a bad file stops the
server with its reason) and again on ``reload`` (SIGHUP; a bad file then keeps the keys in
force and says why).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

READ, WRITE, ADMIN = 1, 2, 3
LEVEL_NAMES = {READ: "read", WRITE: "write", ADMIN: "admin"}
MIN_KEY_CHARS = 16
MAX_KEYS = 10_000
MAX_FILE_BYTES = 4 * 1024 * 1024
_HEX = re.compile(r"[0-9a-f]{64}")


class KeyFileError(ValueError):
    """An API keys file that cannot be used, with the reason."""


@dataclass(frozen=True)
class Grant:
    """What one key may do: up to ``level``, on ``collections`` (None: on every one)."""

    level: int
    collections: frozenset[str] | None = None

    def covers(self, collection: str | None) -> bool:
        """Whether the key opens ``collection`` (None: something of no collection, such as
        a fine-tuning job, which only keys of every collection see)."""
        if self.collections is None:
            return True
        return collection is not None and collection in self.collections

    @property
    def name(self) -> str:
        return LEVEL_NAMES[self.level]


FULL = Grant(ADMIN)


def opens(grant: Grant | None, collection: str | None) -> bool:
    """Whether a request with ``grant`` (None: no key asked for, everything open) sees
    ``collection``: what every listing filters by."""
    return grant is None or grant.covers(collection)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_key_file(path: Path) -> list[tuple[bytes, Grant]]:
    """The keys of ``path`` with their grants (``KeyFileError`` naming what is wrong)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise KeyFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, KeyFileError):
            raise
        raise KeyFileError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict) or set(data) != {"keys"} or not isinstance(data["keys"], list):
        raise KeyFileError(f'{path}: expected {{"keys": [...]}}')
    if len(data["keys"]) > MAX_KEYS:
        raise KeyFileError(f"{path}: at most {MAX_KEYS} keys")
    out = []
    seen: set[bytes] = set()
    for i, entry in enumerate(data["keys"]):
        where = f"{path}: keys[{i}]"
        key_digest, grant = _entry(entry, where)
        if key_digest in seen:
            raise KeyFileError(f"{where}: the same key twice")
        seen.add(key_digest)
        out.append((key_digest, grant))
    return out


def _entry(entry: Any, where: str) -> tuple[bytes, Grant]:
    if not isinstance(entry, dict):
        raise KeyFileError(f"{where}: an object, please")
    unknown = set(entry) - {"key", "key_sha256", "collections", "access", "admin"}
    if unknown:
        raise KeyFileError(f"{where}: unknown field {sorted(unknown)[0]!r}")
    if ("key" in entry) == ("key_sha256" in entry):
        raise KeyFileError(f"{where}: give exactly one of key and key_sha256")
    if "key" in entry:
        key = entry["key"]
        if not isinstance(key, str) or len(key) < MIN_KEY_CHARS or not key.isprintable():
            raise KeyFileError(f"{where}: a key is {MIN_KEY_CHARS} or more printable characters")
        key_digest = digest(key)
    else:
        hexed = entry["key_sha256"]
        if not isinstance(hexed, str) or not _HEX.fullmatch(hexed.lower()):
            raise KeyFileError(f"{where}: key_sha256 is 64 hexadecimal digits")
        key_digest = bytes.fromhex(hexed)
    if entry.get("admin") is True:
        if "access" in entry or "collections" in entry:
            raise KeyFileError(f"{where}: an admin key opens everything: no access, collections")
        return key_digest, FULL
    if "admin" in entry and entry["admin"] is not False:
        raise KeyFileError(f"{where}: admin is true or false")
    access = entry.get("access")
    if access not in ("read", "write"):
        raise KeyFileError(f'{where}: access is "read" or "write" (or "admin": true)')
    names = entry.get("collections")
    if (
        not isinstance(names, list)
        or not names
        or len(names) > MAX_KEYS
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise KeyFileError(f'{where}: collections is a non-empty list of names, or ["*"]')
    level = READ if access == "read" else WRITE
    return key_digest, Grant(level, None if "*" in names else frozenset(names))


class KeyRing:
    """The configured keys: full ones, and those of the keys file."""

    def __init__(self, keys: list[str], file: Path | None = None) -> None:
        self.file = file
        self._full = [(digest(k), FULL) for k in keys]
        self._scoped = read_key_file(file) if file is not None else []

    @property
    def enabled(self) -> bool:
        return bool(self._full or self._scoped or self.file is not None)

    def reload(self) -> bool:
        """Read the keys file again; a file that cannot be used leaves the keys in force."""
        if self.file is None:
            return False
        try:
            scoped = read_key_file(self.file)
        except KeyFileError as exc:
            log.error("API keys file not reloaded, the keys in force stay: %s", exc)
            return False
        self._scoped = scoped  # one assignment: a request sees the old list or the new
        log.info("API keys file reloaded: %d keys", len(scoped))
        return True

    def resolve(self, presented: str) -> Grant | None:
        """The grant of ``presented``, or None for a key that is not configured."""
        wanted = digest(presented)
        found: Grant | None = None
        for known, grant in self._full + self._scoped:
            matched = hmac.compare_digest(wanted, known)  # every key compared, every time
            if matched and found is None:
                found = grant
        return found
