"""Fixtures for the fault tests: an engine with its gateway on real uvicorn (127.0.0.1, port 0)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import httpx
import pytest

from engine import Engine
from engine.gateway import Gateway

APP_KEY = "faults-app-key-0123456789"


@dataclass
class Served:
    engine: Engine
    gateway: Gateway
    http: httpx.AsyncClient
    app_key: str = APP_KEY

    async def session(self, user: str = "alice") -> tuple[str, str]:
        r = await self.http.post(
            "/v1/sessions", json={"user_id": user}, headers={"Authorization": f"Bearer {APP_KEY}"}
        )
        assert r.status_code == 201, r.text
        return r.json()["session_id"], r.json()["token"]

    async def raw(self, request: bytes) -> bytes:
        """Send `request` as bytes on a new connection (for what httpx refuses to send)."""
        host, port = self.gateway.address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            await writer.drain()
            return await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()


@pytest.fixture
def serve(make_config):
    """`async with serve(**config) as s`: an engine and its gateway on a free port."""

    @contextlib.asynccontextmanager
    async def start(**overrides) -> AsyncIterator[Served]:
        config = make_config(**overrides, store={"durability": "process"})
        config = replace(config, gateway=replace(config.gateway, app_keys=(APP_KEY,)))
        async with Engine(config) as engine:
            gateway = Gateway(engine)
            address = await gateway.start("127.0.0.1:0")
            try:
                async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as http:
                    yield Served(engine, gateway, http)
            finally:
                await gateway.stop()

    return start
