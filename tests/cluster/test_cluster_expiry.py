"""A session expires in a cluster only when it is idle on every worker: a worker whose copy
is old asks the store before it ends one. Two engines on real Valkey and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging

import pytest

from engine import Engine
from engine.errors import AuthenticationError
from tests.cluster.engines import workers

IDLE = {"idle_timeout_s": 100.0}


async def until_gone(engine: Engine, session_id: str) -> None:
    async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
        while session_id in engine.snapshot().sessions_by_id:
            await asyncio.sleep(0.02)


async def test_a_session_kept_alive_on_one_worker_is_not_expired_by_another(
    worker_config, clock, caplog
):
    async with workers(
        worker_config("w1", sessions=IDLE), worker_config("w2", sessions=IDLE)
    ) as (one, two):
        created = await one.create_session("zed")
        sid, token = created.session_id, created.token
        clock.advance(60)
        await two.send(sid, token, "on w2: active at 60 s")
        clock.advance(60)  # idle for 120 s in w1's copy, 60 s in truth
        with caplog.at_level(logging.INFO, logger="engine.cluster.worker"):
            one.housekeep()  # the store's record is checked in the background
            async with asyncio.timeout(30):  # a bound on a hang, not a timing assertion
                while "kept alive on another worker" not in caplog.text:
                    await asyncio.sleep(0.02)
        await two.send(sid, token, "still alive on w2")
        assert sid in one.snapshot().sessions_by_id
        clock.advance(101)  # now idle everywhere
        one.housekeep()
        await until_gone(one, sid)
        for engine in (one, two):
            with pytest.raises(AuthenticationError):
                await engine.history(sid, token)
