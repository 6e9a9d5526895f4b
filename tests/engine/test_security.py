"""Tokens and envelope encryption: the properties the engine's security promises rest on."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import example, given
from hypothesis import strategies as st

from engine import EngineConfig
from engine.config import MASTER_KEY_ENV
from engine.errors import ConfigurationError, DecryptionFailed, InvalidInput
from engine.security import (
    BOUND_FORMAT,
    GCM_NONCE_BYTES,
    UNBOUND_FORMAT,
    KeyRing,
    SessionCipher,
    TokenRecord,
    check_token,
    fingerprint,
    hash_token,
    issue_token,
    new_token,
    rotate,
    verify_token,
)

NOW = 1_700_000_000.0
TTL = 3600.0
ENV = MASTER_KEY_ENV
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
# Where a message sits in the store: its ciphertext is bound to exactly this.
PLACE: dict[str, Any] = {"session_id": "0123456789abcdef0123456789abcdef", "seq": 3, "role": "user"}


def load_with_env(env: dict[str, str], key_file: Path) -> KeyRing:
    """The ring an engine opens with: keys that EngineConfig.from_env() read, else the file."""
    keys = EngineConfig.from_env(env).store.master_keys
    return KeyRing.load(key_file, keys, given_source=f"environment variable {ENV}")


def assert_no_key_material(text: str, *keys: bytes) -> None:
    for key in keys:
        assert key.decode() not in text
        assert base64.urlsafe_b64decode(key).hex() not in text


# --- tokens -------------------------------------------------------------------------------


def test_token_is_256_bit_url_safe_and_unique() -> None:
    token = new_token()
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert len(raw) == 32
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert new_token() != token


def test_record_stores_only_the_hash() -> None:
    token, record = issue_token(NOW, TTL)
    assert record.token_hash == hash_token(token)
    assert len(record.token_hash) == 32
    assert not hasattr(record, "__dict__")
    stored = [getattr(record, name) for name in TokenRecord.__slots__]
    assert token not in stored
    assert token not in repr(record)


def test_verify_accepts_the_right_token_until_expiry() -> None:
    token, record = issue_token(NOW, TTL)
    assert verify_token(record, token, NOW)
    assert verify_token(record, token, NOW + TTL - 0.001)
    assert not verify_token(record, token, NOW + TTL)
    assert check_token(record, token)  # expiry is separate from authentication
    assert record.expired(NOW + TTL)


def test_verify_rejects_wrong_and_revoked_tokens() -> None:
    token, record = issue_token(NOW, TTL)
    assert not verify_token(record, new_token(), NOW)
    record.revoked = True
    assert not verify_token(record, token, NOW)
    assert not check_token(record, token)


def test_rotation_invalidates_the_old_token() -> None:
    old, record = issue_token(NOW, TTL)
    new, fresh = rotate(record, NOW + 10, TTL)
    assert new != old
    assert verify_token(fresh, new, NOW + 10)
    assert not verify_token(fresh, old, NOW + 10)
    assert not verify_token(record, old, NOW + 10)  # a stale copy of the old record
    assert fresh.issued_at == NOW + 10
    assert fresh.expires_at == NOW + 10 + TTL


def test_revoked_record_cannot_be_rotated_back_to_life() -> None:
    _, record = issue_token(NOW, TTL)
    record.revoked = True
    with pytest.raises(InvalidInput, match="revoked"):
        rotate(record, NOW, TTL)


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("nan")])
def test_non_positive_ttl_is_invalid_input(ttl: float) -> None:
    with pytest.raises(InvalidInput, match="ttl_s"):
        issue_token(NOW, ttl)


@pytest.mark.parametrize(
    "presented",
    [None, 123, b"bytes-token", "", "x" * 257, "tökén", "a" * 10_000, ["list"]],
)
def test_malformed_tokens_are_rejected_without_raising(presented: object) -> None:
    _, record = issue_token(NOW, TTL)
    assert verify_token(record, presented, NOW) is False
    assert verify_token(None, presented, NOW) is False


def test_unknown_session_is_rejected() -> None:
    assert verify_token(None, new_token(), NOW) is False
    assert check_token(None, new_token()) is False


@given(st.one_of(st.text(), st.binary(), st.integers(), st.none(), st.floats()))
def test_verify_never_raises(presented: object) -> None:
    _, record = issue_token(NOW, TTL)
    assert verify_token(record, presented, NOW) is False
    assert verify_token(None, presented, NOW) is False


# --- key loading --------------------------------------------------------------------------


@posix_only
def test_key_file_created_private_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "nested" / "master.key"
    first = KeyRing.load(key_file=key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = KeyRing.load(key_file=key_file)
    assert second.fingerprints() == first.fingerprints()
    _, wrapped = first.new_data_key()
    second.unwrap(wrapped)


def test_key_file_with_several_keys(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    key_file = tmp_path / "master.key"
    key_file.write_bytes(old + b"\n")
    key_file.chmod(0o600)
    _, wrapped = KeyRing.load(key_file=key_file).new_data_key()
    key_file.write_bytes(new + b"\n" + old + b"\n\n")
    ring = KeyRing.load(key_file=key_file)
    assert ring.fingerprints() == [fingerprint(new), fingerprint(old)]
    ring.unwrap(wrapped)


@posix_only
def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    key_file = tmp_path / "master.key"
    key_file.write_bytes(key + b"\n")
    key_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600") as info:
        KeyRing.load(key_file=key_file)
    assert_no_key_material(str(info.value), key)


def test_malformed_key_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    bad = b"not-a-fernet-key-but-secret-looking-AAAAAAAA"
    key_file.write_bytes(bad + b"\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigurationError) as info:
        KeyRing.load(key_file=key_file)
    assert str(key_file) in str(info.value)
    assert bad.decode() not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_empty_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(b"\n\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigurationError, match="no master key"):
        KeyRing.load(key_file=key_file)


def test_env_var_overrides_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_bytes(Fernet.generate_key() + b"\n")
    key_file.chmod(0o600)
    env_key = Fernet.generate_key()
    ring = load_with_env({ENV: env_key.decode()}, key_file)
    assert ring.fingerprints() == [fingerprint(env_key)]


def test_env_var_does_not_create_a_key_file(tmp_path: Path) -> None:
    load_with_env({ENV: Fernet.generate_key().decode()}, tmp_path / "master.key")
    assert not (tmp_path / "master.key").exists()


def test_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    load_with_env({ENV: " , "}, tmp_path / "master.key")
    assert (tmp_path / "master.key").exists()


def test_comma_separated_env_keys_unwrap_data_from_an_old_key(tmp_path: Path) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    cipher, wrapped = load_with_env({ENV: old.decode()}, tmp_path / "k").new_data_key()
    message = cipher.encrypt("hello", **PLACE)
    ring = load_with_env({ENV: f"{new.decode()}, {old.decode()},"}, tmp_path / "k")
    assert ring.fingerprints() == [fingerprint(new), fingerprint(old)]
    assert ring.unwrap(wrapped).decrypt(message, **PLACE) == "hello"


def test_malformed_env_key_names_the_variable_not_the_value(tmp_path: Path) -> None:
    good = Fernet.generate_key()
    bad = "s3cret-but-malformed-key-material"
    with pytest.raises(ConfigurationError) as info:
        load_with_env({ENV: f"{good.decode()},{bad}"}, tmp_path / "k")
    message = str(info.value)
    assert ENV in message and "#2" in message
    assert bad not in message
    assert_no_key_material(message, good)


def test_empty_ring_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no master key"):
        KeyRing([])


# --- envelope encryption, rotation, shredding ---------------------------------------------


def test_session_cipher_round_trip() -> None:
    cipher, _ = KeyRing([Fernet.generate_key()]).new_data_key()
    token = cipher.encrypt("héllo wörld", **PLACE)
    assert b"llo" not in token
    assert cipher.decrypt(token, **PLACE) == "héllo wörld"


def test_tampered_ciphertext_fails() -> None:
    cipher, _ = KeyRing([Fernet.generate_key()]).new_data_key()
    token = bytearray(cipher.encrypt("hello", **PLACE))
    token[20] ^= 0x01
    with pytest.raises(DecryptionFailed) as info:
        cipher.decrypt(bytes(token), **PLACE)
    assert info.value.what == "message"


def test_messages_are_aes_gcm_with_a_fresh_nonce_each_and_any_altered_byte_fails() -> None:
    cipher = SessionCipher(Fernet.generate_key())
    first, second = cipher.encrypt("same text", **PLACE), cipher.encrypt("same text", **PLACE)
    assert first[:1] == BOUND_FORMAT and first != second  # a random nonce per message
    assert len(first) == 1 + GCM_NONCE_BYTES + len("same text") + 16  # format, nonce, tag
    for position in (0, 5, 1 + GCM_NONCE_BYTES, len(first) - 1):  # format, nonce, body, tag
        altered = bytearray(first)
        altered[position] ^= 0x01
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(bytes(altered), **PLACE)
    for truncated in (first[:1], first[:10], first[:-1]):
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(truncated, **PLACE)
    with pytest.raises(DecryptionFailed):  # relabelled as unbound, to skip the place check
        cipher.decrypt(UNBOUND_FORMAT + first[1:], **PLACE)


def failure_of(cipher: SessionCipher, ciphertext: bytes, place: dict[str, Any]) -> str:
    with pytest.raises(DecryptionFailed) as info:
        cipher.decrypt(ciphertext, **place)
    return str(info.value)


def test_a_message_decrypts_only_in_its_own_place_and_the_error_never_says_why() -> None:
    cipher = SessionCipher(Fernet.generate_key())
    sealed = cipher.encrypt("move me", **PLACE)
    assert cipher.decrypt(sealed, **PLACE) == "move me"
    elsewhere = [
        {**PLACE, "seq": 2},
        {**PLACE, "seq": 4},
        {**PLACE, "seq": -1},  # not even a valid seq: still only "unreadable"
        {**PLACE, "role": "assistant"},
        {**PLACE, "session_id": "f" * 32},
        # The same bytes split differently between session id and role must not match.
        {**PLACE, "session_id": PLACE["session_id"] + "u", "role": "ser"},
    ]
    reasons = {failure_of(cipher, sealed, place) for place in elsewhere}
    tampered = bytearray(sealed)
    tampered[-1] ^= 0x01
    reasons.add(failure_of(cipher, bytes(tampered), PLACE))
    reasons.add(failure_of(cipher, sealed[:-1], PLACE))
    assert reasons == {failure_of(SessionCipher(Fernet.generate_key()), sealed, PLACE)}


PLACE_FIELDS = {
    "session_id": st.text(max_size=40),
    "seq": st.integers(0, 2**64 - 1),
    "role": st.text(max_size=12),
}
# A place and one near it: each field kept or redrawn, so near misses are common.
place_pairs = st.fixed_dictionaries(PLACE_FIELDS).flatmap(
    lambda here: st.tuples(
        st.just(here),
        st.fixed_dictionaries(
            {name: st.just(here[name]) | field for name, field in PLACE_FIELDS.items()}
        ),
    )
)


@given(place_pairs)
@example(({"session_id": "ab", "seq": 1, "role": "c"}, {"session_id": "a", "seq": 1, "role": "bc"}))
def test_no_two_places_accept_the_same_ciphertext(pair: tuple[dict, dict]) -> None:
    here, there = pair
    cipher = SessionCipher(Fernet.generate_key())
    sealed = cipher.encrypt("text", **here)
    if here == there:
        assert cipher.decrypt(sealed, **there) == "text"
    else:
        with pytest.raises(DecryptionFailed):
            cipher.decrypt(sealed, **there)


def unbound_ciphertext(data_key: bytes, text: str) -> bytes:
    """Exactly what the previous version wrote: its key derivation, no associated data."""
    key = HKDF(SHA256(), 32, salt=None, info=b"session-console message key v1").derive(data_key)
    nonce = os.urandom(GCM_NONCE_BYTES)
    return UNBOUND_FORMAT + nonce + AESGCM(key).encrypt(nonce, text.encode(), None)


def test_unbound_aes_gcm_messages_from_earlier_versions_still_decrypt() -> None:
    data_key = Fernet.generate_key()
    legacy = unbound_ciphertext(data_key, "written before binding")
    cipher = SessionCipher(data_key)
    assert cipher.decrypt(legacy, **PLACE) == "written before binding"
    altered = bytearray(legacy)
    altered[-1] ^= 0x01
    with pytest.raises(DecryptionFailed):
        cipher.decrypt(bytes(altered), **PLACE)
    with pytest.raises(DecryptionFailed):
        SessionCipher(Fernet.generate_key()).decrypt(legacy, **PLACE)  # another session's key


def test_messages_stored_as_fernet_tokens_by_earlier_versions_still_decrypt() -> None:
    data_key = Fernet.generate_key()
    legacy = Fernet(data_key).encrypt(b"written before AES-GCM")
    assert SessionCipher(data_key).decrypt(legacy, **PLACE) == "written before AES-GCM"
    with pytest.raises(DecryptionFailed):
        SessionCipher(Fernet.generate_key()).decrypt(legacy, **PLACE)  # another session's key


def test_tampered_wrapped_key_fails() -> None:
    ring = KeyRing([Fernet.generate_key()])
    _, wrapped = ring.new_data_key()
    with pytest.raises(DecryptionFailed) as info:
        ring.unwrap(wrapped[:-2] + b"AA")
    assert info.value.what == "data key"


def test_another_sessions_cipher_cannot_read() -> None:
    ring = KeyRing([Fernet.generate_key()])
    alice, _ = ring.new_data_key()
    bob, _ = ring.new_data_key()
    with pytest.raises(DecryptionFailed):
        bob.decrypt(alice.encrypt("alice's secret", **PLACE), **PLACE)


def test_ring_without_the_master_key_cannot_unwrap() -> None:
    _, wrapped = KeyRing([Fernet.generate_key()]).new_data_key()
    with pytest.raises(DecryptionFailed) as info:
        KeyRing([Fernet.generate_key()]).unwrap(wrapped)
    assert "missing" in str(info.value)


def test_rotate_rewrap_drop_keeps_data_readable() -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    old_ring = KeyRing([old_key])
    cipher, wrapped = old_ring.new_data_key()
    message = cipher.encrypt("kept", **PLACE)

    ring = old_ring.rotate(new_key)
    assert ring.fingerprints() == [fingerprint(new_key), fingerprint(old_key)]
    assert ring.unwrap(wrapped).decrypt(message, **PLACE) == "kept"

    rewrapped = ring.rewrap(wrapped)
    final = ring.drop_old_keys()
    assert final.fingerprints() == [fingerprint(new_key)]
    assert final.unwrap(rewrapped).decrypt(message, **PLACE) == "kept"  # bytes never changed
    with pytest.raises(DecryptionFailed):
        old_ring.unwrap(rewrapped)


def test_drop_without_rewrap_shreds() -> None:
    old_ring = KeyRing([Fernet.generate_key()])
    _, wrapped = old_ring.new_data_key()
    final = old_ring.rotate(Fernet.generate_key()).drop_old_keys()
    with pytest.raises(DecryptionFailed):
        final.unwrap(wrapped)


def test_rotate_to_an_existing_key_does_not_duplicate_it() -> None:
    a, b = Fernet.generate_key(), Fernet.generate_key()
    ring = KeyRing([a, b]).rotate(b)
    assert ring.fingerprints() == [fingerprint(b), fingerprint(a)]


def test_rotate_to_malformed_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="rotate"):
        KeyRing([Fernet.generate_key()]).rotate(b"short")


def test_reprs_and_errors_show_no_key_material(tmp_path: Path) -> None:
    master = Fernet.generate_key()
    ring = KeyRing([master])
    data_key = Fernet.generate_key()
    cipher = SessionCipher(data_key)
    _, wrapped = ring.new_data_key()
    with pytest.raises(DecryptionFailed) as unwrap_error:
        KeyRing([Fernet.generate_key()]).unwrap(wrapped)
    with pytest.raises(DecryptionFailed) as decrypt_error:
        cipher.decrypt(b"garbage", **PLACE)
    texts = [
        repr(ring),
        str(ring),
        repr(cipher),
        str(cipher),
        str(unwrap_error.value),
        str(decrypt_error.value),
    ]
    for text in texts:
        assert_no_key_material(text, master, data_key)
    assert fingerprint(master) in repr(ring)
    assert fingerprint(data_key) in repr(cipher)
