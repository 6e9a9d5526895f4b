"""Agent types and the praisonaiagents `Agent` objects built from them.

This is the one module that imports praisonaiagents or touches its private members (the cost
counters, the persistence and guardrail hooks): an upgrade of the library is checked here.
Every constructor argument is explicit and `rules=False`, so files in the working directory
(AGENTS.md, CLAUDE.md, .praisonai/) can never enter a prompt or change a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigurationError

# Read by praisonaiagents while its package is imported, so it is set here, before the import
# below, rather than in EngineConfig.from_env(), which runs later. An explicit setting wins.
os.environ.setdefault("PRAISONAI_TELEMETRY_DISABLED", "true")

from praisonaiagents import Agent

PACKAGED_TYPES = Path(__file__).with_name("agents.toml")
REQUIRED = ("role", "goal", "backstory", "instructions", "model")


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    role: str
    goal: str
    backstory: str
    instructions: str
    model: str
    min_instances: int = 1
    max_instances: int = 8
    idle_timeout_s: float = 300.0


def load_agent_specs(path: Path | None = None) -> dict[str, AgentSpec]:
    """Agent types from a TOML file; the packaged `agents.toml` when no path is given."""
    path = path or PACKAGED_TYPES
    source = str(path)
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read agent types from {source}: {exc}") from None
    specs = {name: _spec(name, fields, source) for name, fields in table.items()}
    if not specs:
        raise ConfigurationError(f"{source} defines no agent types; add at least one [name] table")
    return specs


def _spec(name: str, fields: Any, source: str) -> AgentSpec:
    if not isinstance(fields, dict):
        raise ConfigurationError(f"{source}: [{name}] must be a table of fields")
    missing = [f for f in REQUIRED if not isinstance(fields.get(f), str) or not fields[f]]
    if missing:
        raise ConfigurationError(f"{source}: [{name}] needs text fields {', '.join(missing)}")
    unknown = set(fields) - set(AgentSpec.__slots__)
    if unknown:
        raise ConfigurationError(
            f"{source}: [{name}] has unknown fields {', '.join(sorted(unknown))}"
        )
    try:
        spec = AgentSpec(name=name, **fields)
    except TypeError as exc:
        raise ConfigurationError(f"{source}: [{name}] {exc}") from None
    if not 0 <= spec.min_instances <= spec.max_instances or spec.max_instances < 1:
        raise ConfigurationError(
            f"{source}: [{name}] needs 0 <= min_instances <= max_instances and max >= 1"
        )
    return spec


class SessionAgent(Agent):
    """An Agent without praisonaiagents' idle thread hops.

    Version 1.7.17 hands work to the default thread pool three times per turn even when it has
    nothing to do: `_persist_message` twice (no DB or session store is configured: the engine
    persists conversations itself, encrypted) and the guardrail check once (no guardrail is
    configured). Each hop waits for a pool thread and for the GIL, which under load adds
    milliseconds to every turn; benchmarks/agent_turns.py measures the difference. With a DB,
    a session store or a guardrail set, the library's own path runs unchanged.
    """

    async def _apersist_message(self, *args: Any, **kwargs: Any) -> None:
        if self._db is not None or self._session_store is not None:
            await super()._apersist_message(*args, **kwargs)

    async def _aapply_guardrail_with_retry(self, response_text: Any, *args: Any, **kwargs: Any):
        if self._guardrail_fn:
            return await super()._aapply_guardrail_with_retry(response_text, *args, **kwargs)
        return response_text


def build_agent(spec: AgentSpec, model: Any) -> Agent:
    """A praisonaiagents Agent whose model is `model` (an adapter with get_response_async)."""
    agent = SessionAgent(
        name=spec.name,
        role=spec.role,
        goal=spec.goal,
        # praisonaiagents reads `instructions` only to fill a missing role/goal/backstory, so the
        # instructions travel in the backstory, which reaches every system prompt.
        backstory=f"{spec.backstory}\n\n{spec.instructions}",
        model=model,
        tools=[],
        memory=False,
        knowledge=None,
        planning=False,
        reflection=False,
        rules=False,
        guardrails=None,
        web=False,
        output="silent",
    )
    # Without this, praisonaiagents adds a prompt fragment chosen from the model's name.
    agent.harness_base_prompt = ""
    return agent


def bind_history(agent: Agent, history: list[dict[str, str]]) -> None:
    """Give the agent one session's prior turns (a fresh list: the agent appends to it)."""
    agent.chat_history = history


def reset_agent(agent: Agent) -> None:
    """Clear all per-conversation state so nothing of one session reaches the next."""
    agent.clear_history()
    agent._last_stop_reason = None
    agent._total_cost = 0.0
    agent._total_tokens_in = 0
    agent._total_tokens_out = 0


def is_pristine(agent: Agent) -> bool:
    """True when no conversation state survives; a pool discards agents that fail this."""
    return (
        len(agent.chat_history) == 0
        and not agent._total_tokens_in
        and not agent._total_tokens_out
        and not agent._total_cost
    )
