"""A JetStream that is there but not answering yet (a restarted server still recovering its
streams) is asked again for a few seconds before the controller falls back to ping discovery
(controller/registry.py ``with_recovery``, controller/fleet.py ``Fleet.registry``/``agents``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import nats.errors
import nats.js.errors
import pytest

import shoal.controller.registry as registry_module
from shoal.controller import Fleet
from shoal.controller.errors import RegistryUnavailable
from shoal.controller.registry import AgentRecord, Registry, with_recovery
from shoal.controller.transport import is_transient, jetstream_errors
from tests.factories import agent_facts

T0 = datetime(2026, 1, 1, tzinfo=UTC)

RECOVERING = nats.js.errors.ServiceUnavailableError(
    code=503, err_code=10008, description="JetStream system temporarily unavailable"
)
STREAM_OFFLINE = nats.js.errors.APIError(code=500, err_code=10118, description="stream is offline")
NOT_ENABLED = nats.js.errors.ServiceUnavailableError(
    code=503, err_code=10076, description="JetStream not enabled"
)
NOT_ENABLED_FOR_ACCOUNT = nats.js.errors.ServiceUnavailableError(
    code=503, err_code=10039, description="JetStream not enabled for account"
)
STREAM_NOT_FOUND = nats.js.errors.NotFoundError(
    code=404, err_code=10059, description="stream not found"
)


@pytest.fixture(autouse=True)
def _quick_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "RECOVERY_WAIT", 0.5)
    monkeypatch.setattr(registry_module, "RECOVERY_POLL", 0.01)


async def translated(exc: Exception) -> RegistryUnavailable:
    """``exc`` as the controller sees it: through transport.jetstream_errors."""
    try:
        async with jetstream_errors("registry"):
            raise exc
    except RegistryUnavailable as translated:
        return translated
    raise AssertionError(f"{exc!r} was not translated")


@pytest.mark.parametrize(
    ("cause", "transient"),
    [
        (nats.errors.TimeoutError(), True),
        (TimeoutError(), True),
        (RECOVERING, True),
        (STREAM_OFFLINE, True),
        (nats.errors.ConnectionReconnectingError(), True),
        (NOT_ENABLED, False),
        (NOT_ENABLED_FOR_ACCOUNT, False),
        (nats.errors.NoRespondersError(), False),
        (nats.js.errors.ServiceUnavailableError(), False),  # a bare 503: no responders
        (nats.js.errors.APIError(code=400, err_code=10052, description="bad request"), False),
    ],
)
async def test_which_errors_are_worth_asking_again(cause: Exception, transient: bool) -> None:
    assert is_transient(await translated(cause)) is transient


async def test_with_recovery_asks_again_until_jetstream_answers() -> None:
    answers: list[Exception | str] = [RECOVERING, nats.errors.TimeoutError(), "ok"]
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise await translated(answer)
        return answer

    assert await with_recovery(call) == "ok"
    assert calls == 3


async def test_with_recovery_gives_up_after_its_time_with_the_last_error() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise await translated(RECOVERING)

    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        await with_recovery(call, wait=0.2, poll=0.02)
    assert 0.15 <= time.monotonic() - started < 2
    assert 5 <= calls <= 12


@pytest.mark.parametrize("cause", [NOT_ENABLED, nats.errors.NoRespondersError()])
async def test_with_recovery_does_not_wait_for_a_jetstream_that_is_not_there(
    cause: Exception,
) -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise await translated(cause)

    with pytest.raises(RegistryUnavailable):
        await with_recovery(call)
    assert calls == 1


# --- through the Fleet -------------------------------------------------------------------


class FakeJetStream:
    """stream_info answers from a script (exceptions to raise, then "there")."""

    def __init__(self, script: list[Exception]) -> None:
        self.script = script
        self.infos: list[str] = []
        self.created: list[str] = []

    async def stream_info(self, name: str, **_: Any) -> object:
        self.infos.append(name)
        if "REGISTRY" in name and self.script:
            raise self.script.pop(0)
        return object()

    async def add_stream(self, config: Any) -> object:
        self.created.append(config.name)
        return object()


class FakeConnection:
    """Stands in for the nats-py client under a transport Connection."""

    def __init__(self, js: FakeJetStream) -> None:
        self.js = js
        self.raw = self

    def jetstream(self, timeout: float = 5.0) -> FakeJetStream:
        return self.js


def record(host: str) -> AgentRecord:
    facts = agent_facts(host, at=T0, heartbeat_interval=5)
    return AgentRecord(host, facts, T0, True)


def fleet_on(js: FakeJetStream, pinged: list[str]) -> Fleet:
    fleet = Fleet()
    fleet._nc = FakeConnection(js)  # type: ignore[assignment]

    async def discover(window: float | None = None) -> list[AgentRecord]:
        pinged.append("ping")
        return [record("pinged-host")]

    fleet.discover = discover  # type: ignore[method-assign]
    return fleet


async def test_a_recovering_jetstream_is_waited_for_instead_of_pinging() -> None:
    js = FakeJetStream([RECOVERING, nats.errors.TimeoutError(), RECOVERING])
    pinged: list[str] = []
    fleet = fleet_on(js, pinged)
    registry = await fleet.registry()
    assert isinstance(registry, Registry)
    assert js.infos.count("SHOAL_REGISTRY") == 4 and not js.created
    assert await fleet.registry() is registry  # settled: not asked again
    assert js.infos.count("SHOAL_REGISTRY") == 4
    assert pinged == []


async def test_a_jetstream_still_recovering_after_the_wait_falls_back_to_ping_then_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "RECOVERY_WAIT", 0.1)
    js = FakeJetStream([RECOVERING] * 1000)
    pinged: list[str] = []
    fleet = fleet_on(js, pinged)
    started = time.monotonic()
    assert [r.host_id for r in await fleet.agents()] == ["pinged-host"]
    assert time.monotonic() - started < 2
    assert pinged == ["ping"]
    asked = js.infos.count("SHOAL_REGISTRY")
    assert asked >= 2
    js.script.clear()  # recovered: the next call finds the registry
    assert isinstance(await fleet.registry(), Registry)
    assert js.infos.count("SHOAL_REGISTRY") == asked + 1


@pytest.mark.parametrize("cause", [NOT_ENABLED, nats.errors.NoRespondersError()])
async def test_without_jetstream_the_fleet_pings_at_once_and_for_good(cause: Exception) -> None:
    js = FakeJetStream([cause])
    pinged: list[str] = []
    fleet = fleet_on(js, pinged)
    assert [r.host_id for r in await fleet.agents()] == ["pinged-host"]
    assert js.infos.count("SHOAL_REGISTRY") == 1 and pinged == ["ping"]
    await fleet.agents()
    assert js.infos.count("SHOAL_REGISTRY") == 1  # settled: no JetStream here


async def test_a_missing_registry_stream_is_created_not_waited_for() -> None:
    js = FakeJetStream([STREAM_NOT_FOUND])
    fleet = fleet_on(js, [])
    assert isinstance(await fleet.registry(), Registry)
    assert js.infos.count("SHOAL_REGISTRY") == 1 and js.created == ["SHOAL_REGISTRY"]


async def test_a_registry_read_cut_short_by_recovery_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    js = FakeJetStream([])
    pinged: list[str] = []
    fleet = fleet_on(js, pinged)
    failures = [RECOVERING, nats.errors.TimeoutError()]
    reads = 0

    async def read(self: Registry, offline_after: float | None = None) -> list[AgentRecord]:
        nonlocal reads
        reads += 1
        if failures:
            raise await translated(failures.pop(0))
        return [record("from-registry")]

    monkeypatch.setattr(Registry, "read", read)
    assert [r.host_id for r in await fleet.agents()] == ["from-registry"]
    assert reads == 3 and pinged == []
