"""Rolling deploys: wave planning and failure handling (controller/rollout.py).

The fake sits at the project's own seam: a Fleet whose ``request`` answers from a
script per host (progress, then one reply or silence) instead of NATS, and whose
``agents`` lists a fixed inventory, so that target resolution stays the real one.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import pytest
from pydantic import BaseModel

from shoal.controller import (
    ExitCode,
    Fleet,
    FleetResult,
    HostFinished,
    HostProgress,
    InvalidParallelism,
    LockLost,
    RollbackStarted,
    RolloutFinished,
    RolloutReport,
    RolloutStarted,
    WaveFinished,
    WaveStarted,
    collect_rollout,
    plan_waves,
    rollout_exit_code,
)
from shoal.controller.registry import AgentRecord
from shoal.controller.rollout import DEPLOYED, ROLLED_BACK, RolloutEvent, wave_size
from shoal.controller.targeting import Limit
from shoal.protocol import (
    VERBS,
    AgentFacts,
    DeployArgs,
    DeployPhase,
    DeployResult,
    DockerFacts,
    ErrorCode,
    ErrorInfo,
    FailureAction,
    Order,
    Progress,
    RemoveArgs,
    Reply,
    RollbackArgs,
    RolloutConfig,
    Selector,
    ServiceSpec,
    Verb,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SPEC = ServiceSpec(name="web", image="nginx:1.27")


def record(host: str, online: bool = True) -> AgentRecord:
    facts = AgentFacts(
        host_id=host,
        instance=f"instance-{host}",
        arch="amd64",
        os="linux",
        kernel="6.1.0",
        docker=DockerFacts(reachable=True, version="27.0.0"),
        agent_version="0.1.0",
        protocol_version=1,
        started_at=T0,
        sent_at=T0,
        heartbeat_interval=5.0,
    )
    return AgentRecord(host_id=host, facts=facts, last_seen=T0, online=online)


class FakeLock:
    def __init__(self) -> None:
        self.locked = True
        self.lost = False
        self.entered = 0
        self.released = 0

    async def __aenter__(self) -> FakeLock:
        self.entered += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.released += 1


@dataclass
class Call:
    verb: Verb
    hosts: tuple[str, ...]
    args: BaseModel


class ScriptedFleet(Fleet):
    """A Fleet that answers from a script: ``script[(verb, host)]`` names the answer.

    Answers: ``created``, ``updated`` (default for deploy), ``unchanged``, ``fail``,
    ``silent`` (no answer), ``not_found``. Rollback answers ``rolled_back`` by default,
    remove answers ``removed``. Offline hosts are never asked. Every request is
    recorded in ``calls``; with ``gate`` set, replies wait for it.
    """

    def __init__(self, inventory: dict[str, bool], script: dict[tuple[Verb, str], str]) -> None:
        super().__init__()
        self.inventory = inventory
        self.script = script
        self.calls: list[Call] = []
        self.lock = FakeLock()
        self.gate: asyncio.Event | None = None
        self.locks_asked = 0
        self.answered = 0

    async def agents(self) -> list[AgentRecord]:
        return [record(h, online) for h, online in sorted(self.inventory.items())]

    def service_lock(self, service: str) -> Any:
        self.locks_asked += 1
        return self.lock

    async def request(
        self,
        verb: Verb,
        args: BaseModel,
        *,
        selector: Selector | None = None,
        limit: Limit | None = None,
        timeout: float | None = None,
        on_progress: Any = None,
        on_reply: Any = None,
    ) -> FleetResult[Any]:
        targets = await self.resolve(selector, limit)
        self.calls.append(Call(verb, tuple(targets.all), args))
        result: FleetResult[Any] = FleetResult(
            verb=str(verb), request_id="0123456789abcdef", targeted=targets.all
        )
        answers = {h: self.answer(verb, h) for h in targets.online}
        for host in targets.online:
            if answers[host] != "silent" and on_progress is not None:
                on_progress(self.progress(host, DeployPhase.PULLING, 10, 40))
                on_progress(self.progress(host, DeployPhase.STARTING))
        if self.gate is not None:
            await self.gate.wait()
        for host in targets.online:
            answer = answers[host]
            if answer == "silent":
                result.missing.append(host)
                continue
            reply = self.reply(verb, args, host, answer)
            if on_reply is not None:
                on_reply(reply)
            if reply.ok:
                result.replies[host] = VERBS[verb].result.model_validate(reply.result)
            else:
                assert reply.error is not None
                result.errors[host] = reply.error
        result.missing = sorted([*result.missing, *targets.offline])
        result.offline = list(targets.offline)
        self.answered += 1
        return result

    def answer(self, verb: Verb, host: str) -> str:
        default = {Verb.DEPLOY: "updated", Verb.ROLLBACK: "rolled_back", Verb.REMOVE: "removed"}
        return self.script.get((verb, host), default[verb])

    @staticmethod
    def progress(
        host: str, phase: str, current: float | None = None, total: float | None = None
    ) -> Progress:
        return Progress(
            id="0123456789abcdef", host=host, seq=0, phase=phase, current=current, total=total
        )

    @staticmethod
    def reply(verb: Verb, args: BaseModel, host: str, answer: str) -> Reply:
        common: dict[str, Any] = {
            "id": "0123456789abcdef",
            "host": host,
            "started_at": T0,
            "duration": 0.1,
        }
        if answer == "fail":
            error = ErrorInfo(
                code=ErrorCode.DEPLOY_FAILED,
                message="container exited during the monitor window",
                detail={"phase": "health", "reason": "exited", "logs": [], "restored_revision": 1},
            )
            return Reply(ok=False, error=error, **common)
        if answer == "not_found":
            error = ErrorInfo(code=ErrorCode.NOT_FOUND, message="no previous revision")
            return Reply(ok=False, error=error, **common)
        if verb == Verb.REMOVE:
            return Reply(ok=True, result={"service": "web", "removed": ["c1"]}, **common)
        dry_run = isinstance(args, DeployArgs) and args.dry_run
        revision = {"created": 1, "updated": 2, "unchanged": 1, "rolled_back": 1}[answer]
        result = DeployResult(
            service="web",
            action=answer,
            revision=revision,
            previous_revision=None if answer == "created" else 1,
            image="nginx:1.27",
            spec_hash="0123456789abcdef",
            diff=["image: nginx:1.26 -> nginx:1.27"] if answer == "updated" else [],
            dry_run=dry_run,
        )
        return Reply(ok=True, result=result.model_dump(mode="json"), **common)


def fleet_of(*hosts: str, offline: tuple[str, ...] = (), **script: str) -> ScriptedFleet:
    """Hosts online (and ``offline``); ``script`` as ``host="fail"`` for deploy answers."""
    inventory = {h: True for h in hosts} | {h: False for h in offline}
    return ScriptedFleet(
        inventory=inventory,
        script={(Verb.DEPLOY, h.replace("_", "-")): a for h, a in script.items()},
    )


def summary(events: list[RolloutEvent]) -> list[tuple[Any, ...]]:
    """Events without progress, as short tuples: the order a test asserts."""
    shown: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, RolloutStarted):
            shown.append(("started", e.waves))
        elif isinstance(e, WaveStarted):
            shown.append(("wave", e.index, e.hosts))
        elif isinstance(e, HostFinished):
            shown.append(("host", e.host, e.outcome))
        elif isinstance(e, WaveFinished):
            shown.append(("wave-done", e.index, e.failed_hosts))
        elif isinstance(e, RollbackStarted):
            shown.append(("rollback", e.hosts))
        elif isinstance(e, RolloutFinished):
            shown.append(("finished", e.verdict))
    return shown


async def run_all(events: AsyncIterator[RolloutEvent]) -> list[RolloutEvent]:
    return [event async for event in events]


def cfg(**fields: Any) -> RolloutConfig:
    return RolloutConfig(**fields)


def hosts(n: int) -> list[str]:
    return [f"h{i:02d}" for i in range(n)]


def requests(fleet: ScriptedFleet) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(c.verb), c.hosts) for c in fleet.calls]


# --- planning ---------------------------------------------------------------------------


def test_plan_canary_then_waves_of_n_in_sorted_order() -> None:
    assert plan_waves(["e", "c", "a", "d", "b"], "2", canary=1) == [
        ["a"],
        ["b", "c"],
        ["d", "e"],
    ]


@pytest.mark.parametrize(
    ("parallelism", "sizes"),
    [
        ("1", [1] * 10),
        ("3", [3, 3, 3, 1]),
        ("30%", [3, 3, 3, 1]),
        ("25%", [3, 3, 3, 1]),  # rounded up
        ("1%", [1] * 10),  # at least one host
        ("100%", [10]),
        ("0", [10]),  # all at once
        ("20", [10]),
    ],
)
def test_plan_parallelism_n_and_percent(parallelism: str, sizes: list[int]) -> None:
    waves = plan_waves(hosts(10), parallelism)
    assert [len(w) for w in waves] == sizes
    assert [h for w in waves for h in w] == hosts(10)


def test_plan_percent_counts_the_canary_hosts_too() -> None:
    assert [len(w) for w in plan_waves(hosts(10), "50%", canary=2)] == [2, 5, 3]


def test_plan_offline_hosts_last_so_the_canary_can_answer() -> None:
    assert plan_waves(["b", "d"], "2", canary=1, offline=["a", "c"]) == [
        ["b"],
        ["d", "a"],
        ["c"],
    ]


def test_plan_canary_larger_than_the_fleet_and_empty_fleet() -> None:
    assert plan_waves(["a", "b"], "1", canary=5) == [["a", "b"]]
    assert plan_waves([], "2", canary=1) == []


@pytest.mark.parametrize("bad", ["", "x", "-1", "2.5", "101%", "%"])
def test_plan_bad_parallelism_is_refused(bad: str) -> None:
    with pytest.raises(InvalidParallelism):
        wave_size(bad, 10)


def test_exit_code_of_outcomes() -> None:
    assert rollout_exit_code({}) == ExitCode.NO_MATCH
    assert rollout_exit_code({"a": "updated", "b": "unchanged", "c": "created"}) == ExitCode.OK
    assert rollout_exit_code({"a": "updated", "b": "skipped"}) == ExitCode.HOST_ERROR
    assert rollout_exit_code({"a": "rolled_back"}) == ExitCode.HOST_ERROR
    assert rollout_exit_code({"a": "failed", "b": "missing"}) == ExitCode.MISSING
    assert rollout_exit_code({"a": "rolled_back"}, ROLLED_BACK) == ExitCode.OK


# --- running --------------------------------------------------------------------------


async def test_canary_then_waves_all_updated() -> None:
    fleet = fleet_of("a", "b", "c", "d", "e")
    events = await run_all(fleet.deploy(SPEC, config=cfg(parallelism="2"), canary=1))
    assert summary(events) == [
        ("started", [["a"], ["b", "c"], ["d", "e"]]),
        ("wave", 0, ["a"]),
        ("host", "a", "updated"),
        ("wave-done", 0, []),
        ("wave", 1, ["b", "c"]),
        ("host", "b", "updated"),
        ("host", "c", "updated"),
        ("wave-done", 1, []),
        ("wave", 2, ["d", "e"]),
        ("host", "d", "updated"),
        ("host", "e", "updated"),
        ("wave-done", 2, []),
        ("finished", "completed"),
    ]
    assert requests(fleet) == [
        ("deploy", ("a",)),
        ("deploy", ("b", "c")),
        ("deploy", ("d", "e")),
    ]
    assert all(isinstance(c.args, DeployArgs) and c.args.service == SPEC for c in fleet.calls)
    assert (fleet.lock.entered, fleet.lock.released) == (1, 1)
    report = RolloutReport()
    for event in events:
        report.add(event)
    assert report.exit_code == ExitCode.OK
    assert report.verdict == "completed"


async def test_progress_comes_before_the_host_answer() -> None:
    fleet = fleet_of("a")
    events = await run_all(fleet.deploy(SPEC))
    mine = [e for e in events if isinstance(e, HostProgress | HostFinished)]
    assert [type(e).__name__ for e in mine] == ["HostProgress", "HostProgress", "HostFinished"]
    pulling = mine[0]
    assert isinstance(pulling, HostProgress)
    assert (pulling.host, pulling.phase, pulling.current, pulling.total) == ("a", "pulling", 10, 40)


async def test_parallel_percent_in_a_run() -> None:
    fleet = fleet_of(*hosts(10))
    report = await collect_rollout(fleet.deploy(SPEC, config=cfg(parallelism="30%")))
    assert [len(c.hosts) for c in fleet.calls] == [3, 3, 3, 1]
    assert report.verdict == "completed"
    assert report.exit_code == ExitCode.OK


async def test_deploy_args_carry_order_and_monitor_of_the_config() -> None:
    fleet = fleet_of("a")
    config = cfg(order=Order.START_FIRST, monitor=12.0)
    await run_all(fleet.deploy(SPEC, config=config, health_timeout=30.0))
    args = fleet.calls[0].args
    assert isinstance(args, DeployArgs)
    assert (args.order, args.monitor, args.health_timeout, args.dry_run) == (
        Order.START_FIRST,
        12.0,
        30.0,
        False,
    )


async def test_pause_stops_after_the_first_failed_wave() -> None:
    fleet = fleet_of("a", "b", "c", "d", "e", "f", c="fail")
    events = await run_all(
        fleet.deploy(SPEC, config=cfg(parallelism="2", failure_action=FailureAction.PAUSE))
    )
    assert summary(events)[-5:] == [
        ("wave", 1, ["c", "d"]),
        ("host", "c", "failed"),
        ("host", "d", "updated"),
        ("wave-done", 1, ["c"]),
        ("finished", "paused"),
    ]
    assert requests(fleet) == [("deploy", ("a", "b")), ("deploy", ("c", "d"))]
    finished = events[-1]
    assert isinstance(finished, RolloutFinished)
    assert finished.hosts == {
        "a": "updated",
        "b": "updated",
        "c": "failed",
        "d": "updated",
        "e": "skipped",
        "f": "skipped",
    }
    failed = next(e for e in events if isinstance(e, HostFinished) and e.host == "c")
    assert failed.error is not None and failed.error.code == ErrorCode.DEPLOY_FAILED
    assert failed.revision == 1  # the agent restored the previous revision
    assert rollout_exit_code(finished.hosts) == ExitCode.HOST_ERROR
    assert fleet.lock.released == 1


async def test_continue_goes_on_within_max_failure_ratio() -> None:
    fleet = fleet_of("a", "b", "c", "d", "e", "f", b="fail")
    config = cfg(parallelism="2", failure_action=FailureAction.CONTINUE, max_failure_ratio=0.5)
    events = await run_all(fleet.deploy(SPEC, config=config))
    assert len(fleet.calls) == 3
    ratios = [e.failure_ratio for e in events if isinstance(e, WaveFinished)]
    assert ratios == [0.5, 0.25, round(1 / 6, 4)]
    finished = events[-1]
    assert isinstance(finished, RolloutFinished)
    assert finished.verdict == "failed"  # every wave ran, but b is not on the new revision
    assert finished.hosts["b"] == "failed"
    assert rollout_exit_code(finished.hosts) == ExitCode.HOST_ERROR


async def test_continue_stops_beyond_max_failure_ratio() -> None:
    fleet = fleet_of("a", "b", "c", "d", a="fail", b="fail")
    config = cfg(parallelism="2", failure_action=FailureAction.CONTINUE, max_failure_ratio=0.3)
    events = await run_all(fleet.deploy(SPEC, config=config))
    assert requests(fleet) == [("deploy", ("a", "b"))]
    finished = events[-1]
    assert isinstance(finished, RolloutFinished)
    assert finished.verdict == "failed"
    assert finished.hosts == {"a": "failed", "b": "failed", "c": "skipped", "d": "skipped"}


async def test_pause_tolerates_failures_within_max_failure_ratio() -> None:
    fleet = fleet_of("a", "b", "c", "d", b="fail")
    config = cfg(parallelism="2", failure_action=FailureAction.PAUSE, max_failure_ratio=0.5)
    events = await run_all(fleet.deploy(SPEC, config=config))
    assert len(fleet.calls) == 2
    assert summary(events)[-1] == ("finished", "failed")


async def test_rollback_rolls_back_updated_and_removes_created() -> None:
    fleet = fleet_of("a", "b", "c", "d")
    fleet.script = {(Verb.DEPLOY, "a"): "updated", (Verb.DEPLOY, "b"): "created"}
    fleet.script[(Verb.DEPLOY, "c")] = "unchanged"
    fleet.script[(Verb.DEPLOY, "d")] = "fail"
    config = cfg(parallelism="0", failure_action=FailureAction.ROLLBACK)
    back = cfg(parallelism="1", order=Order.START_FIRST, monitor=3.0)
    events = await run_all(fleet.deploy(SPEC, config=config, rollback_config=back))
    assert summary(events)[-5:] == [
        ("wave-done", 0, ["d"]),
        ("rollback", ["a", "b"]),
        ("host", "a", "rolled_back"),
        ("host", "b", "removed"),
        ("finished", "rolled_back"),
    ]
    assert requests(fleet) == [
        ("deploy", ("a", "b", "c", "d")),
        ("rollback", ("a",)),
        ("remove", ("b",)),
    ]
    rollback_args = fleet.calls[1].args
    assert rollback_args == RollbackArgs(
        service="web", order=Order.START_FIRST, monitor=3.0, health_timeout=300.0
    )
    assert fleet.calls[2].args == RemoveArgs(service="web")
    finished = events[-1]
    assert isinstance(finished, RolloutFinished)
    assert finished.hosts == {"a": "rolled_back", "b": "removed", "c": "unchanged", "d": "failed"}
    assert rollout_exit_code(finished.hosts) == ExitCode.HOST_ERROR


async def test_rollback_config_paces_the_rollback_in_waves() -> None:
    fleet = fleet_of("a", "b", "c", "d", "e", "f", e="fail")
    config = cfg(parallelism="3", failure_action=FailureAction.ROLLBACK)
    report = await collect_rollout(
        fleet.deploy(SPEC, config=config, rollback_config=cfg(parallelism="2"))
    )
    assert requests(fleet) == [
        ("deploy", ("a", "b", "c")),
        ("deploy", ("d", "e", "f")),
        ("rollback", ("a", "b")),
        ("rollback", ("c", "d")),
        ("rollback", ("f",)),
    ]
    assert report.verdict == "rolled_back"
    assert report.outcomes["e"] == "failed"


async def test_a_failed_rollback_still_tries_every_host() -> None:
    fleet = fleet_of("a", "b", "c", c="fail")
    fleet.script[(Verb.ROLLBACK, "a")] = "fail"
    config = cfg(parallelism="0", failure_action=FailureAction.ROLLBACK)
    report = await collect_rollout(fleet.deploy(SPEC, config=config, rollback_config=cfg()))
    assert requests(fleet)[1:] == [("rollback", ("a",)), ("rollback", ("b",))]
    assert report.outcomes == {"a": "failed", "b": "rolled_back", "c": "failed"}
    assert report.verdict == "rolled_back"


async def test_failed_canary_stops_and_pauses_even_with_continue() -> None:
    fleet = fleet_of("a", "b", "c", a="fail")
    config = cfg(parallelism="2", failure_action=FailureAction.CONTINUE, max_failure_ratio=1.0)
    events = await run_all(fleet.deploy(SPEC, config=config, canary=1))
    assert requests(fleet) == [("deploy", ("a",))]
    assert summary(events)[-1] == ("finished", "paused")


async def test_failed_canary_rolls_back_when_the_action_is_rollback() -> None:
    fleet = fleet_of("a", "b", "c", "d", b="fail")
    config = cfg(parallelism="2", failure_action=FailureAction.ROLLBACK, max_failure_ratio=1.0)
    events = await run_all(fleet.deploy(SPEC, config=config, canary=2))
    assert requests(fleet) == [("deploy", ("a", "b")), ("rollback", ("a",))]
    assert summary(events)[-3:] == [
        ("rollback", ["a"]),
        ("host", "a", "rolled_back"),
        ("finished", "rolled_back"),
    ]


async def test_missing_hosts_count_as_failed() -> None:
    fleet = fleet_of("a", "b", "c", offline=("d",), b="silent")
    config = cfg(parallelism="2", failure_action=FailureAction.CONTINUE, max_failure_ratio=0.5)
    events = await run_all(fleet.deploy(SPEC, config=config))
    started = events[0]
    assert isinstance(started, RolloutStarted)
    assert started.waves == [["a", "b"], ["c", "d"]]  # the offline host last
    assert requests(fleet) == [("deploy", ("a", "b")), ("deploy", ("c", "d"))]
    assert [e.failed_hosts for e in events if isinstance(e, WaveFinished)] == [["b"], ["d"]]
    finished = events[-1]
    assert isinstance(finished, RolloutFinished)
    assert finished.hosts == {"a": "updated", "b": "missing", "c": "updated", "d": "missing"}
    assert rollout_exit_code(finished.hosts) == ExitCode.MISSING
    report = RolloutReport()
    for event in events:
        report.add(event)
    assert report.missing == ["b", "d"]
    assert report.to_json()["missing"] == ["b", "d"]


async def test_missing_host_with_pause_stops() -> None:
    fleet = fleet_of("a", "b", "c", b="silent")
    events = await run_all(fleet.deploy(SPEC, config=cfg(parallelism="1")))
    assert requests(fleet) == [("deploy", ("a",)), ("deploy", ("b",))]
    assert summary(events)[-1] == ("finished", "paused")


async def test_dry_run_is_one_request_without_lock() -> None:
    fleet = fleet_of("a", "b", "c", offline=("d",), a="created", b="unchanged")
    report = RolloutReport()
    async for event in fleet.deploy(SPEC, config=cfg(parallelism="1"), canary=1, dry_run=True):
        report.add(event)
    assert requests(fleet) == [("deploy", ("a", "b", "c", "d"))]
    args = fleet.calls[0].args
    assert isinstance(args, DeployArgs) and args.dry_run
    assert fleet.locks_asked == 0
    assert report.dry_run
    assert report.waves == [["a"], ["b"], ["c"], ["d"]]  # the plan, for show
    assert report.outcomes == {"a": "created", "b": "unchanged", "c": "updated", "d": "missing"}
    assert report.results["c"].diff == ["image: nginx:1.26 -> nginx:1.27"]
    assert report.results["c"].dry_run
    assert report.verdict == "failed"  # d never answered
    assert report.exit_code == ExitCode.MISSING


async def test_dry_run_all_answering_completes() -> None:
    fleet = fleet_of("a", "b")
    report = await collect_rollout(fleet.deploy(SPEC, dry_run=True))
    assert report.verdict == "completed"
    assert report.exit_code == ExitCode.OK


async def test_no_host_matched_sends_nothing() -> None:
    fleet = fleet_of("a")
    report = await collect_rollout(fleet.deploy(SPEC, selector=Selector(hosts=("zz*",))))
    assert fleet.calls == []
    assert fleet.locks_asked == 0
    assert report.verdict == "failed"
    assert report.exit_code == ExitCode.NO_MATCH
    assert report.to_json()["rollout"]["waves"] == []


async def test_breaking_out_between_waves_stops_sending_and_releases_the_lock() -> None:
    fleet = fleet_of("a", "b", "c")
    seen: list[RolloutEvent] = []
    async with aclosing(fleet.deploy(SPEC, config=cfg(parallelism="1"))) as events:
        async for event in events:
            seen.append(event)
            if isinstance(event, WaveFinished):
                break
    assert requests(fleet) == [("deploy", ("a",))]
    assert (fleet.lock.entered, fleet.lock.released) == (1, 1)
    assert not any(isinstance(e, RolloutFinished) for e in seen)


async def test_breaking_out_mid_wave_lets_that_wave_finish_and_sends_nothing_more() -> None:
    fleet = fleet_of("a", "b", "c", "d")
    fleet.gate = asyncio.Event()
    async with aclosing(fleet.deploy(SPEC, config=cfg(parallelism="2"))) as events:
        async for event in events:
            if isinstance(event, HostProgress):
                fleet.gate.set()  # the hosts would answer while the generator closes
                break
    assert requests(fleet) == [("deploy", ("a", "b"))]
    assert fleet.answered == 1  # the wave in flight was waited for, not abandoned
    assert (fleet.lock.entered, fleet.lock.released) == (1, 1)


async def test_a_lost_lock_stops_before_the_next_wave() -> None:
    fleet = fleet_of("a", "b")
    seen: list[RolloutEvent] = []
    with pytest.raises(LockLost):
        async for event in fleet.deploy(SPEC, config=cfg(parallelism="1")):
            seen.append(event)
            if isinstance(event, WaveFinished):
                fleet.lock.lost = True
    assert requests(fleet) == [("deploy", ("a",))]
    assert fleet.lock.released == 1


async def test_delay_between_waves_not_after_the_last(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr("shoal.controller.rollout.asyncio.sleep", recorded)
    fleet = fleet_of("a", "b", "c")
    await run_all(fleet.deploy(SPEC, config=cfg(parallelism="1", delay=7.0)))
    assert delays == [7.0, 7.0]


async def test_rollback_command_in_waves() -> None:
    fleet = fleet_of("a", "b", "c")
    report = await collect_rollout(
        fleet.rollback("web", config=cfg(parallelism="2", order=Order.START_FIRST)), ROLLED_BACK
    )
    assert requests(fleet) == [("rollback", ("a", "b")), ("rollback", ("c",))]
    assert fleet.calls[0].args == RollbackArgs(
        service="web", order=Order.START_FIRST, monitor=5.0, health_timeout=300.0
    )
    assert report.verdict == "completed"
    assert report.exit_code == ExitCode.OK


async def test_rollback_command_pauses_where_rollback_would_roll_back() -> None:
    fleet = fleet_of("a", "b", "c")
    fleet.script[(Verb.ROLLBACK, "a")] = "not_found"
    config = cfg(parallelism="1", failure_action=FailureAction.ROLLBACK)
    report = await collect_rollout(fleet.rollback("web", config=config), ROLLED_BACK)
    assert requests(fleet) == [("rollback", ("a",))]
    assert report.verdict == "paused"
    assert report.errors["a"].code == ErrorCode.NOT_FOUND
    assert report.exit_code == ExitCode.HOST_ERROR


async def test_report_json_document() -> None:
    fleet = fleet_of("a", "b", b="fail")
    report = await collect_rollout(fleet.deploy(SPEC, config=cfg(parallelism="1")))
    document = report.to_json()
    assert document["targeted"] == ["a", "b"]
    assert set(document["replies"]) == {"a"}
    assert document["replies"]["a"]["action"] == "updated"
    assert document["errors"]["b"]["code"] == "deploy_failed"
    assert document["errors"]["b"]["detail"]["restored_revision"] == 1
    assert document["rollout"] == {
        "service": "web",
        "verdict": "paused",
        "dry_run": False,
        "locked": True,
        "waves": [["a"], ["b"]],
        "hosts": {"a": "updated", "b": "failed"},
    }
    assert document["exit_code"] == 1


def test_events_as_json_lines() -> None:
    result = DeployResult(
        service="web", action="updated", revision=2, image="nginx:1.27", spec_hash="x"
    )
    assert HostFinished("a", "updated", 2, None, result).to_json() == {
        "event": "host_finished",
        "host": "a",
        "outcome": "updated",
        "revision": 2,
        "error": None,
        "result": result.model_dump(mode="json"),
    }
    assert WaveStarted(0, ["a"]).to_json() == {"event": "wave_started", "index": 0, "hosts": ["a"]}
    assert {"created", "updated", "unchanged"} == DEPLOYED


# --- the CLI's own logic (no fleet needed) ------------------------------------------------


def test_flags_override_the_compose_update_config() -> None:
    from shoal.controller.cli.deploy import rollout_overrides, with_overrides

    base = cfg(parallelism="2", delay=5.0, failure_action=FailureAction.ROLLBACK, monitor=9.0)
    overrides = rollout_overrides("25%", "1m", None, 0.5, None, Order.START_FIRST)
    assert with_overrides(base, overrides) == cfg(
        parallelism="25%",
        delay=60.0,
        failure_action=FailureAction.ROLLBACK,
        monitor=9.0,
        max_failure_ratio=0.5,
        order=Order.START_FIRST,
    )
    assert with_overrides(None, rollout_overrides(None, "0", "30", None, None, None)) == cfg(
        delay=0.0, monitor=30.0
    )


def test_combined_exit_of_several_services() -> None:
    from shoal.controller.rollout import RolloutRun

    def combined_exit(reports: list[RolloutReport], aborted: bool) -> ExitCode:
        return RolloutRun(reports, [], "lock lost" if aborted else None).exit_code

    def report(**outcomes: Any) -> RolloutReport:
        r = RolloutReport()
        r.outcomes = dict(outcomes)
        return r

    ok, failed, missing = report(a="updated"), report(a="failed"), report(a="missing")
    assert combined_exit([ok, ok], aborted=False) == ExitCode.OK
    assert combined_exit([ok, failed], aborted=False) == ExitCode.HOST_ERROR
    assert combined_exit([failed, missing], aborted=False) == ExitCode.MISSING
    assert combined_exit([report()], aborted=False) == ExitCode.NO_MATCH
    assert combined_exit([ok], aborted=True) == ExitCode.HOST_ERROR


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deploy", "-f", "{bad}"], "bogus"),
        (["deploy", "-f", "{good}", "nope"], "no such service"),
        (["deploy", "-f", "{good}", "--parallel", "3x"], "--parallel"),
        (["deploy", "-f", "{good}", "--delay", "soon"], "--delay"),
        (["deploy", "-f", "{good}", "--json", "--jsonl"], "--json and --jsonl"),
        (["deploy", "-f", "{missing}"], "missing.yaml"),
        (["rollback", "Not_A_Service"], "invalid service name"),
        (["pull", "not an image"], "invalid image reference"),
    ],
)
def test_cli_usage_errors_exit_2_before_connecting(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from shoal.controller.cli import app
    from shoal.controller.cli.common import err

    stderr = io.StringIO()
    monkeypatch.setattr(err, "file", stderr)

    good = tmp_path / "compose.yaml"
    good.write_text("services:\n  web:\n    image: nginx:1.27\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  web:\n    image: nginx:1.27\n    bogus: 1\n")
    paths = {"{good}": str(good), "{bad}": str(bad), "{missing}": str(tmp_path / "missing.yaml")}
    args = [paths.get(a, a) for a in argv]
    result = CliRunner().invoke(app, ["--server", "nats://127.0.0.1:1", *args])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert message in stderr.getvalue()
