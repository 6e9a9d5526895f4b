"""Session tokens and per-session encryption keys.

Tokens: 256 random bits handed to the client once; only their SHA-256 is kept, so a leaked
database or snapshot cannot be replayed. Comparison is constant-time, and an unknown session
costs the same work as a wrong token, so neither timing nor error type reveals which sessions
exist.

Keys: envelope encryption. Each session gets its own Fernet data key; that key is stored only
wrapped (encrypted) by the master ring. Messages are AES-256-GCM under a key derived from the
data key, each bound to its session, seq and role (see `SessionCipher`). Rotating a master key
rewraps the small data keys, never the message ciphertext. Ending a session discards its
wrapped key, which makes its stored messages unreadable (crypto-shredding) without having to
find and overwrite every row.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import ConfigurationError, DecryptionFailed, InvalidInput

MAX_TOKEN_CHARS = 256

# Random, so no presented token can ever match it; only there to make a lookup miss cost a hash
# and a compare, exactly like a lookup hit.
_DUMMY_DIGEST = hashlib.sha256(secrets.token_bytes(32)).digest()

# A message's ciphertext: a format byte, a random 96-bit nonce, then AES-GCM's output
# (ciphertext and 16-byte tag). BOUND_FORMAT authenticates the row's place as associated data
# (see `_message_context`), so a row moved to another seq, role or session fails to decrypt.
# UNBOUND_FORMAT (no associated data) and Fernet tokens (first byte b"g") are what earlier
# versions wrote; they still decrypt but cannot be checked against their place.
BOUND_FORMAT = b"\x02"
UNBOUND_FORMAT = b"\x01"
GCM_NONCE_BYTES = 12
# Associated data: seq as 8-byte big-endian unsigned, the UTF-8 session id's length as 2-byte
# big-endian, the session id, then the UTF-8 role filling the rest. Fixed header plus one
# length leaves exactly one way to split any byte string, so no two contexts collide.
_CONTEXT_HEADER = struct.Struct(">QH")
_MESSAGE_KEY_INFO = b"session-console message key v1"


# --- tokens -------------------------------------------------------------------------------


def new_token() -> str:
    """256 bits from the OS CSPRNG, URL-safe so it travels in headers and query strings."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """SHA-256 of the token: a full-entropy secret needs no salt or slow KDF."""
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(slots=True)
class TokenRecord:
    """What the engine keeps about a token: its hash and lifetime, never the token itself."""

    token_hash: bytes = field(repr=False)
    issued_at: float
    expires_at: float
    revoked: bool = False

    def expired(self, now: float) -> bool:
        """Token lifetime only; session idle/absolute expiry is tracked by `sessions`."""
        return now >= self.expires_at


def issue_token(now: float, ttl_s: float) -> tuple[str, TokenRecord]:
    """A fresh token (to hand out once) and the record to store."""
    if not ttl_s > 0:
        raise InvalidInput(f"token ttl_s must be a positive number of seconds, got {ttl_s!r}")
    token = new_token()
    return token, TokenRecord(hash_token(token), issued_at=now, expires_at=now + ttl_s)


def rotate(record: TokenRecord, now: float, ttl_s: float) -> tuple[str, TokenRecord]:
    """Replace a token; the old record is revoked so a stale copy of it cannot verify either.

    A revoked record is refused so rotation can never bring an ended session back to life.
    """
    if record.revoked:
        raise InvalidInput(
            "token was revoked; a revoked session cannot be rotated, create a new one"
        )
    token, fresh = issue_token(now, ttl_s)
    record.revoked = True
    return token, fresh


def _well_formed(presented: object) -> TypeGuard[str]:
    return (
        isinstance(presented, str) and 0 < len(presented) <= MAX_TOKEN_CHARS and presented.isascii()
    )


def check_token(record: TokenRecord | None, presented: object) -> bool:
    """Hash match and not revoked; ignores expiry. Never raises on malformed input.

    A missing record still hashes and compares (against a dummy) so that "no such session"
    and "wrong token" take the same path.
    """
    if not _well_formed(presented):
        return False
    expected = record.token_hash if record is not None else _DUMMY_DIGEST
    matches = hmac.compare_digest(hash_token(presented), expected)
    return matches and record is not None and not record.revoked


def verify_token(record: TokenRecord | None, presented: object, now: float) -> bool:
    """True only for the right, unrevoked, unexpired token. An expired token is just invalid."""
    return check_token(record, presented) and record is not None and not record.expired(now)


# --- keys ---------------------------------------------------------------------------------


def fingerprint(key: bytes) -> str:
    """A short, non-reversible id for a key, safe to show in logs and the console."""
    return hashlib.sha256(key).hexdigest()[:12]


def _parse_key(raw: bytes, source: str, index: int) -> Fernet:
    """Validate one Fernet key; the error names where it came from, never what it was."""
    try:
        return Fernet(raw)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"master key #{index + 1} from {source} is not a valid Fernet key "
            "(44 url-safe base64 characters); generate one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key())'`"
        ) from None


class SessionCipher:
    """Encrypts one session's messages with its own data key.

    AES-256-GCM under a key derived from the data key by HKDF-SHA256: one call into OpenSSL per
    message, where Fernet's padding, HMAC and base64 run partly in Python. Each message is bound to
    its place (session id, seq, role) as associated data, so whoever can edit the database file
    still cannot swap, copy or relabel a session's messages unnoticed (deleting rows is not caught).
    Messages stored by earlier versions (unbound AES-GCM, or Fernet tokens under the data key
    itself) still decrypt, unchecked against their place.
    """

    __slots__ = ("_data_key", "_message_key")

    def __init__(self, data_key: bytes) -> None:
        Fernet(data_key)  # rejects a malformed key
        # Keys, not cipher objects: an AESGCM object holds an OpenSSL context of about 2.6 KB,
        # more than a hot session's own state, and building one per call costs under 1 us.
        self._data_key = data_key
        self._message_key = HKDF(SHA256(), 32, salt=None, info=_MESSAGE_KEY_INFO).derive(data_key)

    def __repr__(self) -> str:
        return f"SessionCipher(fingerprint={fingerprint(self._data_key)!r})"

    def encrypt(self, plaintext: str, *, session_id: str, seq: int, role: str) -> bytes:
        """Bound to its place: `decrypt` needs the same session id, seq and role."""
        nonce = os.urandom(GCM_NONCE_BYTES)  # random nonces: safe far beyond a session's size
        sealed = AESGCM(self._message_key).encrypt(
            nonce, plaintext.encode("utf-8"), _message_context(session_id, seq, role)
        )
        return BOUND_FORMAT + nonce + sealed

    def decrypt(self, ciphertext: bytes, *, session_id: str, seq: int, role: str) -> str:
        """Checks a bound message against the place it was read from; one error for any failure,
        so it never says which part (key, bytes, session, seq or role) did not match."""
        try:
            kind = ciphertext[:1]
            if kind in (BOUND_FORMAT, UNBOUND_FORMAT):
                start = 1 + GCM_NONCE_BYTES
                context = _message_context(session_id, seq, role) if kind == BOUND_FORMAT else None
                plain = AESGCM(self._message_key).decrypt(
                    ciphertext[1:start], ciphertext[start:], context
                )
            else:
                plain = Fernet(self._data_key).decrypt(ciphertext)
            return plain.decode("utf-8")
        except (InvalidTag, InvalidToken, ValueError, struct.error):
            raise DecryptionFailed(
                "message",
                "its ciphertext was altered or belongs to another session's key; "
                "the stored message is unreadable",
            ) from None


def _message_context(session_id: str, seq: int, role: str) -> bytes:
    """A message's place as AES-GCM associated data; the layout is described at the top."""
    sid = session_id.encode("utf-8")
    return _CONTEXT_HEADER.pack(seq, len(sid)) + sid + role.encode("utf-8")


class KeyRing:
    """Master keys: the first encrypts (wraps), every one decrypts, so rotation is gradual."""

    __slots__ = ("_keys", "_multi")

    def __init__(self, master_keys: Sequence[bytes], *, source: str = "master_keys") -> None:
        keys = tuple(key.strip() for key in master_keys)
        if not keys:
            raise ConfigurationError(f"{source} holds no master key; give at least one Fernet key")
        self._multi = MultiFernet([_parse_key(key, source, i) for i, key in enumerate(keys)])
        self._keys = keys

    @classmethod
    def load(
        cls, key_file: Path, given: Sequence[str] = (), *, given_source: str = "configuration"
    ) -> KeyRing:
        """The `given` keys (primary first) when there are any, else those of `key_file`.

        With neither, a fresh key is written to `key_file`, created with mode 0o600 in one
        `os.open` so it is never readable by others, not even briefly. An existing key file
        that group or others can access is refused (ConfigurationError asking for `chmod 600`)
        rather than silently used: a readable master key defeats encryption at rest.
        `given_source` names where the given keys came from in errors (never the keys).
        """
        if given:
            return cls([key.encode() for key in given], source=given_source)
        try:
            return cls._read_key_file(key_file)
        except FileNotFoundError:
            pass
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return cls._read_key_file(key_file)
        with os.fdopen(fd, "wb") as out:
            out.write(key + b"\n")
            out.flush()
            os.fsync(out.fileno())  # losing the master key loses every session's data
        return cls([key], source=f"key file {key_file}")

    @classmethod
    def _read_key_file(cls, key_file: Path) -> KeyRing:
        mode = key_file.stat().st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigurationError(
                f"key file {key_file} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):#o}); run `chmod 600 {key_file}` and retry"
            )
        keys = [line.strip() for line in key_file.read_bytes().splitlines() if line.strip()]
        return cls(keys, source=f"key file {key_file}")

    def save(self, key_file: Path) -> None:
        """Write the ring (primary first) to `key_file` atomically, mode 0o600 throughout."""
        key_file.parent.mkdir(parents=True, exist_ok=True)
        partial = key_file.with_name(key_file.name + ".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(key + b"\n" for key in self._keys))
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, key_file)

    def __repr__(self) -> str:
        return f"KeyRing(fingerprints={self.fingerprints()!r})"

    def fingerprints(self) -> list[str]:
        """Primary first."""
        return [fingerprint(key) for key in self._keys]

    def new_data_key(self) -> tuple[SessionCipher, bytes]:
        """A session's cipher, and its data key wrapped by the primary: store only the latter."""
        data_key = Fernet.generate_key()
        return SessionCipher(data_key), self._multi.encrypt(data_key)

    def unwrap(self, wrapped: bytes) -> SessionCipher:
        try:
            return SessionCipher(self._multi.decrypt(wrapped))
        except (InvalidToken, ValueError):
            raise DecryptionFailed("data key", self._missing_key_advice()) from None

    def rotate(self, new_master: bytes) -> KeyRing:
        """New ring with `new_master` as primary; old keys still decrypt until dropped."""
        new_master = new_master.strip()
        others = (key for key in self._keys if key != new_master)
        return KeyRing([new_master, *others], source="rotate(new_master)")

    def rewrap(self, wrapped: bytes) -> bytes:
        """Re-encrypt a wrapped data key under the primary; message ciphertext is untouched."""
        try:
            return self._multi.rotate(wrapped)
        except InvalidToken:
            raise DecryptionFailed("data key", self._missing_key_advice()) from None

    def drop_old_keys(self) -> KeyRing:
        """Only the primary; call after every wrapped data key has been rewrapped."""
        return KeyRing(self._keys[:1])

    def _missing_key_advice(self) -> str:
        return (
            f"no master key in the ring (fingerprints {', '.join(self.fingerprints())}) "
            "opens it: the key that wrapped it is missing (add it back to the ring) "
            "or the wrapped key was altered or shredded (its session data is gone)"
        )
