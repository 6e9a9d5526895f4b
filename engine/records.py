"""Translation between live sessions and the store's rows, both ways.

Content leaves memory only as ciphertext under the session's data key, bound to the row's
session id, seq and role so a row moved in the file no longer decrypts; the key leaves only
wrapped by the master key; the token only as its hash. Restoring reverses that and reports a
session whose key or messages cannot be decrypted instead of failing the whole start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType

from engine.errors import DecryptionFailed
from engine.security import KeyRing, TokenRecord
from engine.sessions import Context, Message, Session
from engine.store import MessageRow, SessionRow


def session_row(session: Session) -> SessionRow:
    assert session.token is not None and session.wrapped_key is not None
    return SessionRow(
        session_id=session.session_id,
        user_id=session.user_id,
        tier=session.tier,
        metadata_json=json.dumps(dict(session.metadata)),
        created_at=session.created_at,
        last_active_at=session.last_active_at,
        idle_timeout_s=session.idle_timeout_s,
        lifetime_s=session.lifetime_s,
        token_hash=session.token.token_hash,
        token_issued_at=session.token.issued_at,
        token_expires_at=session.token.expires_at,
        wrapped_key=session.wrapped_key,
        worker=session.worker or None,
        agent_type=session.agent_type,
        turns=session.turns,
        prompt_tokens=session.prompt_tokens,
        completion_tokens=session.completion_tokens,
        errors=session.errors,
    )


def message_row(session: Session, seq: int, message: Message) -> MessageRow:
    assert session.cipher is not None
    ciphertext = session.cipher.encrypt(
        message.content, session_id=session.session_id, seq=seq, role=message.role
    )
    return MessageRow(
        session_id=session.session_id,
        seq=seq,
        role=message.role,
        ciphertext=ciphertext,
        at=message.at,
        size=message.size,
    )


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored session that could not be decrypted; it stays on disk, untouched."""

    session_id: str
    user_id: str
    reason: str


def restore_session(
    row: SessionRow,
    messages: list[MessageRow],
    keyring: KeyRing,
    *,
    context_max_messages: int,
    context_max_bytes: int,
) -> Session | Unreadable:
    try:
        cipher = keyring.unwrap(row.wrapped_key)
        decrypted = [
            Message(
                m.role,  # type: ignore[arg-type]
                cipher.decrypt(m.ciphertext, session_id=row.session_id, seq=m.seq, role=m.role),
                m.at,
            )
            for m in messages
        ]
    except DecryptionFailed as exc:
        return Unreadable(row.session_id, row.user_id, str(exc))
    context = Context(context_max_messages, context_max_bytes)
    for message in decrypted:
        context.append(message)
    return Session(
        session_id=row.session_id,
        user_id=row.user_id,
        metadata=MappingProxyType(json.loads(row.metadata_json)),
        created_at=row.created_at,
        last_active_at=row.last_active_at,
        idle_timeout_s=row.idle_timeout_s,
        lifetime_s=row.lifetime_s,
        context=context,
        turns=row.turns,
        errors=row.errors,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        agent_type=row.agent_type,
        worker=row.worker or "",
        tier=row.tier,
        token=TokenRecord(row.token_hash, row.token_issued_at, row.token_expires_at),
        wrapped_key=row.wrapped_key,
        cipher=cipher,
        next_seq=messages[-1].seq + 1 if messages else 0,
    )
