"""Live sessions as the store's rows; `engine.restore` reads them back.

Content leaves memory only as ciphertext under the session's data key, bound to the row's
session id, seq and role so a row moved in the file no longer decrypts; the key leaves only
wrapped by the master key; the token only as its hash.
"""

from __future__ import annotations

import json

from engine.sessions import Message, Session
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
