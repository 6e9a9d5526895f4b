"""A separate OS process using the cluster's shared state, for tests that need several.

    python cluster_worker.py reserve URL PREFIX USER COUNT   reserve COUNT api_calls at once,
        after the test says go; prints {"granted": n, "refused": m}
    python cluster_worker.py hold URL PREFIX SESSION TTL     take the session's lease, print
        {"token": t}, then renew it until killed
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace

from engine import ClusterSettings, LimitSettings
from engine.clock import ManualClock, SystemClock
from engine.cluster import ClusterState
from engine.errors import QuotaExceeded
from engine.quotas import DEFAULT_TIERS, QuotaLimit

START = 1_700_000_000.0  # every process on the same manual time: one window for all
GO_KEY = "go"
API_CALLS_LIMIT = 300


def limits() -> LimitSettings:
    free = {**DEFAULT_TIERS["free"], "api_calls": QuotaLimit(API_CALLS_LIMIT, 60.0)}
    return LimitSettings(tiers={**DEFAULT_TIERS, "free": free})


async def reserve(url: str, prefix: str, user_id: str, count: int) -> dict[str, int]:
    # Generous timeouts: the machine is busy starting the other processes.
    settings = ClusterSettings(redis_url=url, key_prefix=prefix, timeout_s=30.0)
    state = await ClusterState.open(settings, ManualClock(START), limits())
    try:
        print("ready", flush=True)
        await state.client.redis.blpop([prefix + GO_KEY], timeout=20)

        async def one() -> bool:
            try:
                await state.quotas.reserve(user_id, {"api_calls": 1})
            except QuotaExceeded:
                return False
            return True

        granted = sum(await asyncio.gather(*(one() for _ in range(count))))
        return {"granted": granted, "refused": count - granted}
    finally:
        await state.aclose()


async def hold(url: str, prefix: str, session_id: str, ttl_s: float) -> None:
    settings = replace(ClusterSettings(redis_url=url, key_prefix=prefix), lease_ttl_s=ttl_s)
    state = await ClusterState.open(settings, SystemClock())
    lease = await state.leases.acquire(session_id, "doomed-worker")
    assert lease is not None, "the session was already held"
    print(json.dumps({"token": lease.token}), flush=True)
    while await state.leases.renew(lease):
        await asyncio.sleep(ttl_s / 10)
    raise SystemExit("lost the lease while alive")


def main() -> None:
    command, url, prefix, name, number = sys.argv[1:6]
    if command == "reserve":
        print(json.dumps(asyncio.run(reserve(url, prefix, name, int(number)))), flush=True)
    elif command == "hold":
        asyncio.run(hold(url, prefix, name, float(number)))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
