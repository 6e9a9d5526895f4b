"""Running one turn on a pooled praisonaiagents Agent: the engine's only contact with a model.

Owns the pools (one per agent type on each worker lane), the model backend chosen by
configuration (`sim` or `openai`) and, for `openai`, the tenant client cache. A turn borrows an
agent, binds it to one session's context only, calls it under a timeout, turns praisonaiagents'
silent failures into `LLMError`, and returns the agent reset.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from engine.agents import AgentSpec, bind_history, build_agent
from engine.clients import ClientCache, ClientCacheStats, openai_client_cache
from engine.clock import Clock
from engine.config import EngineConfig, SimSettings
from engine.errors import LLMError, PoolTimeout
from engine.llm import ModelAdapter
from engine.monitor import Monitor
from engine.openai_backend import OpenAICompatModel, OpenAISettings, resolve_openai_settings
from engine.pool import AgentPool, PooledAgent, PoolView
from engine.sessions import Session
from engine.sim import SimSource, SimulatedModel


@dataclass(frozen=True, slots=True)
class ModelReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model_latency_s: float


class AgentRunner:
    def __init__(
        self,
        config: EngineConfig,
        specs: Iterable[AgentSpec],
        workers: Iterable[str],
        clock: Clock,
        monitor: Monitor,
    ) -> None:
        self._config = config
        self._monitor = monitor
        self._sim_source = SimSource(config.llm.sim)
        self._openai: OpenAISettings | None = None
        self._clients: ClientCache | None = None
        if config.llm.backend == "openai":
            self._openai = resolve_openai_settings(
                config.llm.base_url, config.llm.api_key, config.llm.model
            )
            self._clients = openai_client_cache(
                config.llm.max_cached_clients, config.llm.turn_timeout_s
            )
        specs = tuple(specs)
        self._pools: dict[tuple[str, str], AgentPool] = {
            (worker, spec.name): AgentPool(
                spec, worker, self._new_agent, clock, per_user_cap=config.pools.per_user_agent_cap
            )
            for worker in workers
            for spec in specs
        }

    @property
    def sim_settings(self) -> SimSettings:
        return self._sim_source.settings

    def set_sim(self, settings: SimSettings) -> None:
        """New simulator latency and fault rates for every pooled agent, from their next call."""
        self._sim_source.reconfigure(settings)

    def prewarm(self) -> None:
        for pool in self._pools.values():
            pool.prewarm()

    def reap(self, now: float) -> None:
        for pool in self._pools.values():
            pool.reap(now)

    def pool_views(self) -> tuple[PoolView, ...]:
        return tuple(pool.view() for pool in self._pools.values())

    def client_stats(self) -> ClientCacheStats | None:
        return self._clients.stats() if self._clients is not None else None

    async def aclose(self) -> None:
        if self._clients is not None:
            await self._clients.aclose(wait=True, timeout_s=self._config.llm.turn_timeout_s)

    async def run(
        self,
        session: Session,
        agent_type: str,
        text: str,
        on_delta: Callable[[str], None] | None = None,
    ) -> ModelReply:
        """One turn on a pooled agent bound to this session's context only; `on_delta` gets
        the reply's pieces as the model produces them."""
        pool = self._pools[(session.worker, agent_type)]
        loop = asyncio.get_running_loop()
        waited_from = loop.time()
        try:
            pooled = await pool.acquire(session.user_id, self._config.pools.timeout_s)
        except PoolTimeout as exc:
            self._monitor.record_pool_wait(agent_type, exc.waited, True)
            raise
        self._monitor.record_pool_wait(agent_type, loop.time() - waited_from, False)
        failed = True
        try:
            bind_history(pooled.agent, session.context.chat_history())
            pooled.model.begin_call(on_delta)
            if self._clients is None:  # the simulator: no client to lease
                raw = await self._call(pooled, text)
            else:
                async with self._client_for(session.user_id, pooled.model):
                    raw = await self._call(pooled, text)
            reply = pooled.model.result(raw)
            failed = False
        finally:
            pool.release(pooled, session.user_id, failed=failed)
        outcome = pooled.model.outcome
        return ModelReply(
            str(reply), outcome.prompt_tokens, outcome.completion_tokens, outcome.model_seconds
        )

    async def _call(self, pooled: PooledAgent, text: str) -> str | None:
        """The agent's reply to `text` (None when praisonaiagents hid a failure), bounded by
        the turn timeout."""
        try:
            async with asyncio.timeout(self._config.llm.turn_timeout_s):
                return await pooled.agent.achat(text)
        except TimeoutError:
            raise LLMError(
                f"model gave no reply within {self._config.llm.turn_timeout_s:g}s; "
                "retry, or raise turn_timeout_s"
            ) from None

    @contextlib.asynccontextmanager
    async def _client_for(self, user_id: str, model: ModelAdapter) -> AsyncIterator[None]:
        """Lease the tenant's OpenAI client for the call (no-op for an adapter without one)."""
        if self._clients is None or not isinstance(model, OpenAICompatModel):
            yield
            return
        assert self._openai is not None
        tenant = self._config.llm.tenants.get(user_id)
        api_key = tenant.api_key if tenant else self._openai.api_key
        base_url = (tenant.base_url if tenant else None) or self._openai.base_url
        async with self._clients.lease(api_key, base_url) as client:
            model.bind(client)
            try:
                yield
            finally:
                model.bind(None)

    def _new_agent(self, spec: AgentSpec) -> PooledAgent:
        config = self._config
        model: ModelAdapter
        if self._openai is not None:
            model = OpenAICompatModel(
                config.llm.model or self._openai.model,
                max_retries=config.llm.max_retries,
                timeout_s=config.llm.turn_timeout_s,
                max_completion_tokens=config.llm.max_completion_tokens,
            )
        else:
            model = SimulatedModel(
                source=self._sim_source, timeout_s=config.llm.turn_timeout_s, model=spec.model
            )
        return PooledAgent(build_agent(spec, model), model)
