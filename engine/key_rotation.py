"""Re-wrapping every session key under a new master key, with no moment a crash loses one.

The key file first holds the new key and the old ones, so every key stays readable whatever
happens mid-way; the store re-wraps all wrapped keys in one transaction (message ciphertext is
untouched); once none failed, the file holds the new key alone. Keys that could not be
re-wrapped are reported, and the old key stays until they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path

from engine.security import KeyRing
from engine.sessions import Session
from engine.store import RewrapReport, Store


async def rotate_master_key(
    ring: KeyRing,
    new_key: bytes,
    key_file: Path,
    store: Store,
    sessions: Iterable[Session],
    use: Callable[[KeyRing], None],
) -> RewrapReport:
    """`use(ring)` is called with each ring the key file holds from then on."""
    rotated = ring.rotate(new_key)
    await asyncio.to_thread(rotated.save, key_file)
    use(rotated)
    report = await store.rewrap_keys(rotated.rewrap)
    for session in sessions:
        if session.wrapped_key is not None:
            session.wrapped_key = rotated.rewrap(session.wrapped_key)
    if not report.failed:
        final = rotated.drop_old_keys()
        await asyncio.to_thread(final.save, key_file)
        use(final)
    return report
