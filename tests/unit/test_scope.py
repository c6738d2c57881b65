"""One request path: every Fleet request method takes a Scope, or its fields as keywords."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from shoal import Scope
from shoal.controller import Fleet, Limit
from shoal.controller.result import FleetResult
from shoal.protocol import Selector, Verb

WEB = Selector(labels=("role=web",))


def test_of_replaces_only_the_given_fields() -> None:
    base = Scope(selector=WEB, limit=Limit.parse("2"), timeout=5.0, retries=1)
    assert Scope.of() == Scope()
    assert Scope.of(base) is base
    assert Scope.of(base, timeout=9.0) == Scope(
        selector=WEB, limit=Limit.parse("2"), timeout=9.0, retries=1
    )
    assert Scope.of(None, retries=3) == Scope(retries=3)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Verb, BaseModel, Scope]]:
    """What each request of a Fleet would send (the seam: Fleet._request)."""
    calls: list[tuple[Verb, BaseModel, Scope]] = []

    async def capture(
        self: Fleet, verb: Verb, args: BaseModel, scope: Scope, *_: Any
    ) -> FleetResult[Any]:
        calls.append((verb, args, scope))
        return FleetResult(verb=str(verb), request_id="r", targeted=[])

    monkeypatch.setattr(Fleet, "_request", capture)
    return calls


async def test_keywords_and_a_scope_object_make_the_same_request(
    sent: list[tuple[Verb, BaseModel, Scope]],
) -> None:
    fleet = Fleet()
    await fleet.ps(selector=WEB, timeout=3.0, retries=2)
    await fleet.ps(scope=Scope(selector=WEB, timeout=3.0, retries=2))
    await fleet.ps(scope=Scope(selector=WEB, timeout=1.0), timeout=3.0, retries=2)
    assert [s for _, _, s in sent] == [Scope(selector=WEB, timeout=3.0, retries=2)] * 3


async def test_every_wrapper_passes_its_verb_args_and_scope(
    sent: list[tuple[Verb, BaseModel, Scope]],
) -> None:
    fleet = Fleet()
    scope = Scope(selector=WEB, limit=Limit.parse("50%"))
    await fleet.stop_container("web", stop_timeout=4, scope=scope)
    await fleet.remove_container("web", force=True, scope=scope)
    await fleet.logs("web", tail=5, scope=scope)
    await fleet.info(scope=scope)
    verbs = [(verb, args.model_dump(exclude_defaults=True)) for verb, args, _ in sent]
    assert verbs == [
        (Verb.STOP, {"target": "web", "timeout": 4}),
        (Verb.RM, {"target": "web", "force": True}),
        (Verb.LOGS, {"target": "web", "tail": 5}),
        (Verb.INFO, {}),
    ]
    assert all(s == scope for _, _, s in sent)
