"""`session-console serve` as a real process: the README's examples run against it, and SIGTERM
drains it (the turn in flight finishes and is kept, the process exits 0)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sigterm_stream import stream_through_sigterm

from engine import Engine, EngineConfig, StoreSettings

ROOT = Path(__file__).resolve().parents[2]
APP_KEY = "process-test-app-key"


@contextlib.contextmanager
def serving(data_dir: Path, env: dict[str, str] | None = None):
    """A `serve` process on a free port; yields (base URL, process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(data_dir)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PRAISONAI_TELEMETRY_DISABLED": "true", **(env or {})},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # ends if the process dies: then the assertion says so
            match = re.search(r"serving (http://\S+)", line)
            if match:
                break
        else:
            pytest.fail(f"serve exited {process.wait()} without serving")
        yield match.group(1), process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def readme_block(language: str, after: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    block = re.search(rf"```{language}\n(.*?)```", text[start:], re.S)
    assert block is not None
    return block.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_session_and_openai_example_work(tmp_path):
    data = tmp_path / "data"
    with serving(data) as (base, _):
        script = readme_block("sh", "A session over curl")
        run = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True,
                             env={**os.environ, "GW": base, "DATA": str(data)}, timeout=120)
        assert run.returncode == 0, run.stderr
        out = run.stdout
        assert '"role":"assistant"' in out and "[sim] hello" in out
        assert "event: delta" in out and "event: done" in out
        assert out.count('"role":"user"') >= 2  # the history lists both turns
        assert out.rstrip().endswith("204")
        key = next(line for line in (data / "app.keys").read_text().splitlines()
                   if line and not line.startswith("#"))
        created = httpx.post(f"{base}/v1/sessions", json={"user_id": "bob"},
                             headers={"Authorization": f"Bearer {key}"}).json()
        example = readme_block("python", "The official `openai` client")
        run = subprocess.run(
            [sys.executable, "-c", example], capture_output=True, text=True, timeout=120,
            env={**os.environ, "GW": base, "TOKEN": created["token"],
                 "SID": created["session_id"]},
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith("[sim] hi")


def test_sigterm_drains_the_turn_in_flight_and_exits_0(tmp_path):
    data = tmp_path / "data"
    with serving(data, {"SESSION_CONSOLE_APP_KEYS": APP_KEY}) as (base, process):
        auth = {"Authorization": f"Bearer {APP_KEY}"}
        created = httpx.post(f"{base}/v1/sessions", json={"user_id": "alice"}, headers=auth)
        sid, token = created.json()["session_id"], created.json()["token"]

        events = stream_through_sigterm(base, sid, token, process, timeout_s=60)
        assert events[-1] == "done"
        assert process.wait(timeout=60) == 0
        assert process.stderr is not None
        assert "drained" in process.stderr.read()

    async def reopened() -> list[str]:
        config = EngineConfig(store=StoreSettings(data_dir=data), tune_gc=False)
        async with Engine(config) as engine:
            history = await engine.history(sid, token)
            return [m.content for m in history if m.role == "user"]

    assert asyncio.run(reopened()) == ["finish me please"]
