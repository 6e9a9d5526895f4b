"""Two `session-console serve --database-url ... --redis-url ...` processes as one cluster, over
real HTTP: a session created on one is served by the other, and by the survivor once the
other is SIGKILLed. (A lease held by a killed process lapsing: test_cluster_leases.py.)"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
APP_KEY = "cluster-test-app-key"


@contextlib.contextmanager
def worker(name: str, folder: Path, database_url: str, redis_url: str, env: dict[str, str]):
    """A worker process on a free port; yields (base URL, process)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "console", "serve", "--listen", "127.0.0.1:0",
         "--data-dir", str(folder / name), "--database-url", database_url,
         "--redis-url", redis_url],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PRAISONAI_TELEMETRY_DISABLED": "true", **env},
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"serving (http://\S+)", line)
            if match:
                break
        else:
            pytest.fail(f"worker {name} exited {process.wait()} without serving")
        yield match.group(1), process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def user_texts(base: str, sid: str, token: str) -> list[str]:
    reply = httpx.get(f"{base}/v1/sessions/{sid}/messages",
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    return [m["content"] for m in reply.json()["messages"] if m["role"] == "user"]


def send(base: str, sid: str, token: str, text: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/sessions/{sid}/messages", json={"content": text},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_two_worker_processes_serve_one_session_and_survive_a_sigkill(
    tmp_path, postgres_url, redis_url
):
    env = {
        "SESSION_CONSOLE_APP_KEYS": APP_KEY,
        "SESSION_CONSOLE_MASTER_KEY": Fernet.generate_key().decode(),
    }
    with worker("w1", tmp_path, postgres_url, redis_url, env) as (one, first), \
            worker("w2", tmp_path, postgres_url, redis_url, env) as (two, _):
        created = httpx.post(f"{one}/v1/sessions", json={"user_id": "erin"},
                             headers={"Authorization": f"Bearer {APP_KEY}"}).json()
        sid, token = created["session_id"], created["token"]
        assert send(one, sid, token, "on w1").status_code == 200
        assert send(two, sid, token, "on w2").status_code == 200
        assert user_texts(one, sid, token) == ["on w1", "on w2"]

        first.kill()  # SIGKILL: the survivor serves the session, nothing acknowledged lost
        first.wait()
        reply = send(two, sid, token, "after w1 died")
        assert reply.status_code == 200, reply.text
        assert user_texts(two, sid, token) == ["on w1", "on w2", "after w1 died"]
