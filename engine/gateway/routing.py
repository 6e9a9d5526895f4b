"""The gateway's route table: METHOD and path to an endpoint in one lookup per request.

Starlette's router walks its routes with a regular expression each, behind two middleware
layers, which is a fair share of a request's CPU when the rest is a zero-latency turn. Here a
path is split into segments once and compared with the few templates of its length; a
template's `{name}` matches one non-empty segment, as Starlette's `{name}` does. HEAD is served
by a route's GET endpoint (the server sends no body for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

Endpoint = TypeVar("Endpoint")  # what a route leads to: the app keeps its handler there


@dataclass(frozen=True, slots=True)
class _Template(Generic[Endpoint]):
    literals: tuple[tuple[int, str], ...]  # (segment index, text) that must be equal
    params: tuple[tuple[int, str], ...]  # (segment index, name) captured
    methods: dict[str, Endpoint]

    def params_of(self, segments: list[str]) -> dict[str, str] | None:
        for index, text in self.literals:
            if segments[index] != text:
                return None
        found = {}
        for index, name in self.params:
            if not segments[index]:
                return None
            found[name] = segments[index]
        return found


@dataclass(frozen=True, slots=True)
class Match(Generic[Endpoint]):
    """A route found: its endpoint and path parameters; or status 404/405 and no endpoint."""

    endpoint: Endpoint | None
    params: dict[str, str]
    status: int = 200


class Routes(Generic[Endpoint]):
    def __init__(self) -> None:
        self._static: dict[str, dict[str, Endpoint]] = {}  # path without parameters
        self._templates: dict[int, list[_Template[Endpoint]]] = {}  # by segment count

    def add(self, method: str, template: str, endpoint: Endpoint) -> None:
        segments = template.split("/")
        params = tuple(
            (i, s[1:-1]) for i, s in enumerate(segments) if s.startswith("{") and s.endswith("}")
        )
        if not params:
            self._static.setdefault(template, {})[method] = endpoint
            return
        literals = tuple((i, s) for i, s in enumerate(segments) if i not in dict(params))
        same = self._templates.setdefault(len(segments), [])
        for known in same:
            if known.literals == literals and known.params == params:
                known.methods[method] = endpoint
                return
        same.append(_Template(literals, params, {method: endpoint}))

    def match(self, method: str, path: str) -> Match[Endpoint]:
        methods = self._static.get(path)
        params: dict[str, str] | None = {}
        if methods is None:
            segments = path.split("/")
            for template in self._templates.get(len(segments), ()):
                params = template.params_of(segments)
                if params is not None:
                    methods = template.methods
                    break
        if methods is None or params is None:
            return Match(None, {}, 404)
        endpoint = methods.get("GET" if method == "HEAD" else method)
        if endpoint is None:
            return Match(None, {}, 405)
        return Match(endpoint, params)
