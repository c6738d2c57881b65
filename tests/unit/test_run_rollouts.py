"""Several services rolled out one after another, in the library (controller.rollout)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager

from shoal.controller import ExitCode, LockHeld, RolloutRun, run_rollouts
from shoal.controller.rollout import (
    HostFinished,
    Outcome,
    RolloutEvent,
    RolloutFinished,
    RolloutStarted,
    Starter,
    Verdict,
)

started: list[str] = []


def rollout(service: str, outcome: Outcome, verdict: Verdict, hosts: int = 2) -> Starter:
    """A finished rollout's events: every host with ``outcome``, then ``verdict``."""

    async def events() -> AsyncGenerator[RolloutEvent, None]:
        started.append(service)
        names = [f"h{i}" for i in range(hosts)]
        yield RolloutStarted(service=service, waves=[names] if names else [])
        for host in names:
            yield HostFinished(host=host, outcome=outcome)
        yield RolloutFinished(verdict=verdict, hosts=dict.fromkeys(names, outcome))

    return events


def locked(service: str) -> Starter:
    async def events() -> AsyncGenerator[RolloutEvent, None]:
        started.append(service)
        raise LockHeld(service, "alice@ops (pid 7)", None)
        yield  # an async generator that fails on its first step

    return events


async def test_services_run_in_order_and_a_failure_stops_the_rest() -> None:
    started.clear()
    run = await run_rollouts(
        [
            ("db", rollout("db", "updated", "completed")),
            ("web", rollout("web", "rolled_back", "rolled_back")),
            ("worker", rollout("worker", "updated", "completed")),
        ]
    )
    assert started == ["db", "web"]
    assert [r.service for r in run.reports] == ["db", "web"]
    assert run.not_run == ["worker"] and run.error is None
    assert run.exit_code == ExitCode.HOST_ERROR


async def test_keep_going_runs_every_service() -> None:
    started.clear()
    run = await run_rollouts(
        [
            ("web", rollout("web", "failed", "failed")),
            ("worker", rollout("worker", "unchanged", "completed")),
        ],
        keep_going=True,
    )
    assert started == ["web", "worker"] and run.not_run == []
    assert [r.verdict for r in run.reports] == ["failed", "completed"]


async def test_a_held_lock_stops_the_run_and_names_what_did_not_run() -> None:
    started.clear()
    run = await run_rollouts(
        [
            ("db", rollout("db", "created", "completed")),
            ("web", locked("web")),
            ("worker", rollout("worker", "created", "completed")),
        ]
    )
    assert [r.service for r in run.reports] == ["db"]
    assert run.not_run == ["web", "worker"]
    assert run.error is not None and "locked by alice@ops" in run.error
    assert run.exit_code == ExitCode.HOST_ERROR


async def test_no_matching_host_stops_after_the_first_service() -> None:
    started.clear()
    run = await run_rollouts(
        [
            ("db", rollout("db", "created", "completed", hosts=0)),
            ("web", rollout("web", "created", "completed")),
        ]
    )
    assert started == ["db"] and run.not_run == ["web"]
    assert run.exit_code == ExitCode.NO_MATCH


async def test_watchers_see_every_event_and_every_finished_report() -> None:
    seen: dict[str, list[str]] = {}
    reports: list[str] = []

    @contextmanager
    def watch(service: str) -> Iterator[object]:
        seen[service] = []
        yield lambda event: seen[service].append(event.kind)
        seen[service].append("closed")

    run: RolloutRun = await run_rollouts(
        [("db", rollout("db", "updated", "completed", hosts=1))],
        watch=watch,  # type: ignore[arg-type]
        on_report=lambda report: reports.append(f"{report.service} {report.verdict}"),
    )
    assert seen == {"db": ["rollout_started", "host_finished", "rollout_finished", "closed"]}
    assert reports == ["db completed"] and run.exit_code == ExitCode.OK
