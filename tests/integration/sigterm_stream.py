"""A streamed HTTP turn with SIGTERM sent mid-turn: what the drain tests of every server share."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import httpx


def stream_through_sigterm(
    base: str, session_id: str, token: str, process: subprocess.Popen, timeout_s: float
) -> list[str]:
    """Stream a turn and SIGTERM `process` at its first delta; the SSE event names received."""

    async def stream() -> list[str]:
        events: list[str] = []
        async with httpx.AsyncClient(base_url=base, timeout=timeout_s) as http, http.stream(
            "POST", f"/v1/sessions/{session_id}/messages",
            json={"content": "finish me please", "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                    if events == ["delta"]:
                        process.send_signal(signal.SIGTERM)  # mid-turn
        return events

    return asyncio.run(stream())
