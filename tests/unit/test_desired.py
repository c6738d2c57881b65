"""Where a host stands for a declaration: the pure logic shared by the reconciler and status."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shoal.controller.desired import (
    BACKOFF_BASE,
    BACKOFF_MAX,
    DEPLOYING_FOR,
    Declaration,
    HostState,
    Record,
    backoff,
    evaluate,
    failed_record,
    statuses,
)
from shoal.controller.registry import AgentRecord
from shoal.protocol import Selector, ServiceBeat, ServiceSpec, utcnow
from tests.factories import agent_facts

NOW = utcnow()
SPEC = ServiceSpec(name="web", image="nginx:1.25")


def declaration(**fields: object) -> Declaration:
    return Declaration(service=SPEC, selector=Selector.build(labels=["role=web"]), **fields)


def host(
    name: str = "h1",
    *,
    online: bool = True,
    state: str | None = "running",
    spec_hash: str | None = None,
    health: str = "",
    role: str = "web",
) -> AgentRecord:
    beats = []
    if state is not None:
        beats.append(
            ServiceBeat(
                name="web",
                revision=3,
                spec_hash=spec_hash or SPEC.spec_hash(),
                state=state,
                health=health,
            )
        )
    facts = agent_facts(name, at=NOW, labels={"role": role}, services=beats)
    return AgentRecord(name, facts, NOW, online)


def record(state: str, *, generation: int = 1, age: float = 0.0, **fields: object) -> Record:
    return Record(
        service="web",
        host="h1",
        generation=generation,
        state=state,
        since=NOW - timedelta(seconds=age),
        **fields,
    )


def test_a_host_running_the_declared_spec_is_converged() -> None:
    result = evaluate(declaration(), host(), None, NOW)
    assert result.state == HostState.CONVERGED and result.revision == 3


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        (host(state=None), "not on the host"),
        (host(state="missing"), "not on the host"),
        (host(state="exited"), "the container is exited"),
        (host(spec_hash="0123456789abcdef"), "runs another spec (0123456789abcdef)"),
    ],
)
def test_drift_is_named(agent: AgentRecord, reason: str) -> None:
    result = evaluate(declaration(), agent, None, NOW)
    assert result.state == HostState.DRIFTED and reason in result.reason


def test_unhealthy_counts_as_drift_only_after_the_grace_period() -> None:
    sick = host(health="unhealthy")
    assert evaluate(declaration(), sick, None, NOW, NOW).state == HostState.CONVERGED
    later = NOW + timedelta(seconds=31)
    assert evaluate(declaration(), sick, None, later, NOW).state == HostState.DRIFTED


def test_an_offline_host_is_pending_with_when_it_was_last_seen() -> None:
    result = evaluate(declaration(), host(online=False, state=None), None, NOW)
    assert result.state == HostState.PENDING and result.last_seen == NOW


def test_a_failed_host_shows_why_and_when_it_is_tried_again() -> None:
    failed = record("failed", reason="pull failed", next_try=NOW + timedelta(seconds=5))
    result = evaluate(declaration(), host(state=None), failed, NOW)
    assert result.state == HostState.FAILED
    assert result.reason == "pull failed" and result.next_try == failed.next_try


def test_a_failure_of_an_older_generation_does_not_hold_back_a_new_one() -> None:
    old = record("failed", generation=1, reason="bad image")
    result = evaluate(declaration(generation=2), host(state=None), old, NOW)
    assert result.state == HostState.DRIFTED


def test_a_deploy_in_flight_is_not_repeated_until_it_is_lost() -> None:
    recent = record("deploying", age=10)
    assert evaluate(declaration(), host(state=None), recent, NOW).state == HostState.DEPLOYING
    lost = record("deploying", age=DEPLOYING_FOR + 1)
    assert evaluate(declaration(), host(state=None), lost, NOW).state == HostState.DRIFTED
    # Converged meanwhile (a leader died before recording it): converged.
    assert evaluate(declaration(), host(), recent, NOW).state == HostState.CONVERGED


def test_back_off_doubles_per_failure_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [BACKOFF_BASE, 2 * BACKOFF_BASE, 4 * BACKOFF_BASE]
    assert backoff(50) == BACKOFF_MAX
    first = failed_record(None, declaration(), "h1", "boom")
    second = failed_record(first, declaration(), "h1", "boom")
    assert (first.attempts, second.attempts) == (1, 2)
    assert first.next_try is not None and second.next_try is not None
    assert second.next_try - second.since == timedelta(seconds=2 * BACKOFF_BASE)
    fresh = failed_record(second, declaration(generation=2), "h1", "boom")
    assert fresh.attempts == 1  # counted per generation


def test_a_task_that_exited_is_converged() -> None:
    task = declaration(wait_for="completed")
    assert evaluate(task, host(state="exited"), None, NOW).state == HostState.CONVERGED


def test_a_deleted_declaration_removes_where_the_service_runs() -> None:
    gone = declaration(deleted=True)
    assert evaluate(gone, host(), None, NOW).state == HostState.REMOVING
    assert evaluate(gone, host(state=None), None, NOW).state == HostState.CONVERGED
    assert evaluate(gone, host(online=False), None, NOW).state == HostState.PENDING


def test_statuses_cover_selected_hosts_only() -> None:
    hosts = [host("h1"), host("h2", state=None), host("db1", role="db", state=None)]
    result = statuses({"web": declaration()}, hosts, {})
    assert [(c.host, c.state) for c in result] == [
        ("h1", HostState.CONVERGED),
        ("h2", HostState.DRIFTED),
    ]


def test_the_same_intent_ignores_generation_and_stamps() -> None:
    a = declaration(generation=1, applied_by="alice")
    b = declaration(generation=7, applied_by="bob")
    assert a.same_intent(b)
    other = Declaration(service=SPEC.model_copy(update={"image": "nginx:1.26"}))
    assert not a.same_intent(other)


def test_a_heartbeat_from_before_a_converging_rollout_does_not_make_it_drift_again() -> None:
    after_the_beat = record("converged", age=-2)  # the rollout ended 2 s after the heartbeat
    result = evaluate(declaration(), host(state=None), after_the_beat, NOW)
    assert result.state == HostState.CONVERGED and result.since == after_the_beat.since
    # A heartbeat newer than the record is believed: the service went missing since.
    before_the_beat = record("converged", age=2)
    assert evaluate(declaration(), host(state=None), before_the_beat, NOW).state == (
        HostState.DRIFTED
    )
    # A record of an older generation vouches for nothing.
    older = record("converged", generation=1, age=-2)
    result = evaluate(declaration(generation=2), host(state=None), older, NOW)
    assert result.state == HostState.DRIFTED
