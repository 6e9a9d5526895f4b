"""App keys: who may create sessions for their users through the gateway.

Keys come from the configuration (`EngineConfig.from_env()` reads SESSION_CONSOLE_APP_KEYS, comma-
separated) or, when there are none, from a key file under the data dir that is created on first run
with one random key, mode 0600. Only their SHA-256 digests are held in memory, and a presented key
is compared against every digest in constant time, like session tokens. Nothing here ever logs or
returns a key: the file's path and key fingerprints are what an operator sees.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from engine.config import APP_KEYS_ENV
from engine.errors import ConfigurationError
from engine.security import MAX_TOKEN_CHARS, fingerprint, new_token


class AppKeys:
    def __init__(self, keys: Iterable[str], *, source: str) -> None:
        self._digests = tuple(_digest(key) for key in keys)
        if not self._digests:
            raise ConfigurationError(f"no app keys in {source}; add at least one key")
        self.source = source

    @classmethod
    def load(cls, given: Sequence[str], key_file: Path) -> tuple[AppKeys, bool]:
        """The `given` keys (GatewaySettings.app_keys), else those of `key_file` (created if
        missing).

        Returns the keys and whether the file was created now (the server then says where).
        """
        if given:
            return cls(given, source=f"${APP_KEYS_ENV}"), False
        created = not key_file.exists()
        if created:
            _create_key_file(key_file)
        mode = key_file.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"app key file {key_file} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):#o}); run `chmod 600 {key_file}` and retry"
            )
        lines = key_file.read_text(encoding="utf-8").splitlines()
        keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        return cls(keys, source=f"key file {key_file}"), created

    def verify(self, presented: object) -> bool:
        """True when `presented` is one of the keys; the same work for any input."""
        if not (isinstance(presented, str) and 0 < len(presented) <= MAX_TOKEN_CHARS):
            presented = ""
        digest = _digest(presented)
        found = False
        for expected in self._digests:
            found |= hmac.compare_digest(digest, expected)
        return found

    def fingerprints(self) -> list[str]:
        return [fingerprint(d) for d in self._digests]

    def __repr__(self) -> str:
        return f"AppKeys(source={self.source!r}, fingerprints={self.fingerprints()!r})"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


def _create_key_file(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# app keys for POST /v1/sessions, one a line; keep this file private\n")
        out.write(new_token() + "\n")
        out.flush()
        os.fsync(out.fileno())
