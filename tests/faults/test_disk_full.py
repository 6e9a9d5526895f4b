"""Fault: the disk fills up mid-load.

What the user sees: each turn (or session creation) whose commit cannot be written fails with
`StoreError` saying the disk is full (503 `unavailable` over HTTP), and `engine.ready`
(`/readyz`) turns false; reads go on; every turn acknowledged before is on disk; once there is
room again, writes resume and readiness comes back, with no restart. A failed turn is not
stored: after a restart its messages are gone, as its caller was told.

The disk fills for real, without root, in a process of its own (disk_full_child.py): the
process's file size limit is lowered to the size of its database files, so growing them fails
with EFBIG as a full disk fails with ENOSPC. tests/store/test_store.py fills a real tmpfs
where mounting one is allowed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from disk_full_child import USERS, config

from engine import Engine

ROOT = Path(__file__).resolve().parents[2]


async def test_a_full_disk_fails_turns_clearly_loses_nothing_acknowledged_and_recovers(
    tmp_path,
):
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PRAISONAI_TELEMETRY_DISABLED": "true"}
    env.pop("SESSION_CONSOLE_MASTER_KEY", None)
    child = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("disk_full_child.py")), str(data_dir)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout)

    assert report["ready_before"] is True
    assert report["errors"], "a full disk must fail the turns it could not commit"
    for error in report["errors"]:
        assert error.startswith("StoreError: ") and "the disk is full" in error, error
        assert str(data_dir / "sessions.db") in error
    assert report["unready_at_each_failure"] is True  # readiness follows the last commit
    assert report["reads_while_full"] == USERS
    created = report["create_while_full"]  # a small write may still fit, as on a real disk
    assert created == "created" or "the disk is full" in created, created
    assert report["ready_after"] is True and report["created_after"]

    async with Engine(config(data_dir)) as engine:  # a new process's view of the file
        for session_id, token in report["sessions"].items():
            history = await engine.history(session_id, token)
            stored = [m.content for m in history if m.role == "user"]
            acked = report["acked"][session_id]
            assert sorted(stored) == sorted(acked), session_id  # every acked turn, no failed one
        assert report["created_after"] in engine.snapshot().sessions_by_id
