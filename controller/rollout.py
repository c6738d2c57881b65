"""Rolling deploys across the fleet: waves, failure handling, rollback, as typed events.

A rollout sends one service revision to the targeted hosts in waves. Each wave is one
fleet request (:meth:`Fleet.request`) to the hosts of that wave; progress and answers
come back as events, which the CLI renders and scripts inspect.

Planning (:func:`plan_waves`): online hosts first, then hosts known offline, each
group sorted, so a plan is reproducible. An optional canary wave of N hosts comes
first; the others follow in waves of ``parallelism`` hosts (``N``, or ``N%`` of the
targeted hosts, rounded up; ``0`` means all at once).

Failures: a host fails when it answers with an error, or is ``missing`` (offline, or
silent until the timeout). After each wave the failure ratio is the failed share of
the hosts done so far. While it stays within ``max_failure_ratio`` the rollout goes
on. Beyond it, ``failure_action`` decides:

* ``pause``: stop; hosts already updated stay updated (verdict ``paused``).
* ``continue``: go on past failures while within the ratio; beyond it, stop
  (verdict ``failed``).
* ``rollback``: send ``rollback`` (per ``rollback_config``: parallelism, delay, order,
  monitor) to every host this rollout updated and ``remove`` to every host where it
  created the service (verdict ``rolled_back``). Hosts that failed were already
  restored by their agent. Every such host is tried, whatever fails on the way.

A failed canary wave always stops the rollout: it rolls back if ``failure_action``
is ``rollback``, else it pauses. A rollout that ran every wave ends ``completed``
when every host is on the new revision or was unchanged, else ``failed``.

Hosts a stopped rollout never reached end with outcome ``skipped``. A rolling
``rollback`` (:meth:`Fleet.rollback`) follows the same rules, except that its
``rollback`` failure action pauses: a rollback is not rolled back.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, aclosing, nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ValidationError

from shoal.protocol import (
    DeployAction,
    DeployArgs,
    DeployResult,
    ErrorCode,
    ErrorInfo,
    FailureAction,
    Progress,
    RemoveArgs,
    Reply,
    RollbackArgs,
    RolloutConfig,
    Selector,
    ServiceSpec,
    Verb,
)
from shoal.protocol.sealing import SealingError, seal

from .errors import FleetError
from .gather import ProgressCallback, ReplyCallback
from .locks import LockHeld, LockLost, ServiceLock
from .result import ExitCode, FleetResult
from .targeting import Limit, Targets


class Fleet(Protocol):
    """What a rollout uses of a :class:`~shoal.controller.fleet.Fleet` (no import of it)."""

    async def resolve(
        self, selector: Selector | None = None, limit: Limit | None = None
    ) -> Targets: ...

    def service_lock(self, service: str) -> ServiceLock: ...

    async def request(
        self,
        verb: Verb,
        args: BaseModel,
        *,
        selector: Selector | None = None,
        limit: Limit | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_reply: ReplyCallback | None = None,
        retries: int = 0,
    ) -> FleetResult[Any]: ...


log = logging.getLogger("shoal.controller")

DEPLOY_TIMEOUT = 60.0
"""Default seconds of silence tolerated from a host during a rollout (progress resets it)."""

Outcome = Literal[
    "created", "updated", "unchanged", "rolled_back", "removed", "failed", "missing", "skipped"
]
Verdict = Literal["completed", "paused", "rolled_back", "failed"]

DEPLOYED: frozenset[str] = frozenset({"created", "updated", "unchanged"})
"""Outcomes of a deploy that leave a host on the new revision (or already on it)."""
ROLLED_BACK: frozenset[str] = frozenset({"rolled_back"})
"""The outcome a ``shoal rollback`` wants on every host."""
_FAILED: frozenset[str] = frozenset({"failed", "missing"})


class InvalidParallelism(FleetError, ValueError):
    """A parallelism value is not N or N%."""


# --- events ---------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


class _Event:
    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        """A JSON object: ``{"event": kind, ...fields}`` (one line of ``--jsonl``)."""
        document: dict[str, Any] = {"event": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            document[f.name] = _json_value(getattr(self, f.name))
        return document


@dataclass(frozen=True, slots=True)
class RolloutStarted(_Event):
    """The plan: every targeted host, in waves. ``locked`` is False without JetStream."""

    kind: ClassVar[str] = "rollout_started"
    service: str
    waves: list[list[str]]
    dry_run: bool = False
    locked: bool = False


@dataclass(frozen=True, slots=True)
class WaveStarted(_Event):
    kind: ClassVar[str] = "wave_started"
    index: int
    hosts: list[str]


@dataclass(frozen=True, slots=True)
class HostProgress(_Event):
    """A host's progress: ``phase`` is a :class:`protocol.DeployPhase` value."""

    kind: ClassVar[str] = "host_progress"
    host: str
    phase: str
    message: str = ""
    current: float | None = None
    total: float | None = None


@dataclass(frozen=True, slots=True)
class HostFinished(_Event):
    """A host's answer. ``revision`` is the revision it runs now, when known."""

    kind: ClassVar[str] = "host_finished"
    host: str
    outcome: Outcome
    revision: int | None = None
    error: ErrorInfo | None = None
    result: DeployResult | None = None


@dataclass(frozen=True, slots=True)
class WaveFinished(_Event):
    """``failed_hosts`` of this wave; ``failure_ratio`` over every host done so far."""

    kind: ClassVar[str] = "wave_finished"
    index: int
    failed_hosts: list[str]
    failure_ratio: float


@dataclass(frozen=True, slots=True)
class RollbackStarted(_Event):
    """The hosts this rollout changed, which are now rolled back (or the service removed)."""

    kind: ClassVar[str] = "rollback_started"
    hosts: list[str]


@dataclass(frozen=True, slots=True)
class RolloutFinished(_Event):
    """The verdict, and the final outcome of every targeted host."""

    kind: ClassVar[str] = "rollout_finished"
    verdict: Verdict
    hosts: dict[str, Outcome]


RolloutEvent = (
    RolloutStarted
    | WaveStarted
    | HostProgress
    | HostFinished
    | WaveFinished
    | RollbackStarted
    | RolloutFinished
)


# --- planning -------------------------------------------------------------------------

_PARALLELISM_RE = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


def wave_size(parallelism: str | int, total: int) -> int:
    """Hosts per wave: ``N``, or ``N%`` of ``total`` rounded up (at least 1); 0 = all."""
    m = _PARALLELISM_RE.fullmatch(str(parallelism))
    if not m:
        raise InvalidParallelism(f"invalid parallelism {parallelism!r}: use N or N% (e.g. 2, 25%)")
    value, percent = int(m[1]), bool(m[2])
    if percent and value > 100:
        raise InvalidParallelism(f"invalid parallelism {parallelism!r}: at most 100%")
    if value == 0:
        return max(total, 1)
    if percent:
        return max(1, -(-total * value // 100))
    return value


def plan_waves(
    hosts: Iterable[str],
    parallelism: str | int = "1",
    canary: int = 0,
    *,
    offline: Iterable[str] = (),
) -> list[list[str]]:
    """Split hosts into waves: an optional canary wave, then waves of ``parallelism``.

    ``hosts`` (sorted) come before ``offline`` hosts (sorted), so that a canary is a
    host that can answer. ``parallelism`` N% counts every host, canary included.
    """
    if canary < 0:
        raise InvalidParallelism(f"invalid canary count {canary}: use 0 or more hosts")
    first = sorted(set(hosts))
    ordered = first + sorted(set(offline) - set(first))
    size = wave_size(parallelism, len(ordered))
    waves: list[list[str]] = []
    if canary and ordered:
        waves.append(ordered[:canary])
        ordered = ordered[canary:]
    waves.extend(ordered[i : i + size] for i in range(0, len(ordered), size))
    return waves


# --- results --------------------------------------------------------------------------


def rollout_exit_code(outcomes: Mapping[str, str], success: Iterable[str] = DEPLOYED) -> ExitCode:
    """0 only if every targeted host ended in ``success`` (by default: on the new
    revision or unchanged); 3 if no host was targeted; 4 if a host never answered;
    else 1."""
    wanted = frozenset(success)
    if not outcomes:
        return ExitCode.NO_MATCH
    if any(o == "missing" for o in outcomes.values()):
        return ExitCode.MISSING
    if any(o not in wanted for o in outcomes.values()):
        return ExitCode.HOST_ERROR
    return ExitCode.OK


@dataclass(slots=True)
class RolloutReport:
    """Everything a rollout's events said, folded into one value (see :meth:`add`).

    ``replies``, ``errors`` and ``missing`` name every host that answered ok, failed
    or stayed silent, by its final outcome; hosts a stopped rollout never reached
    are ``skipped``.
    """

    service: str = ""
    success: frozenset[str] = DEPLOYED
    waves: list[list[str]] = field(default_factory=list)
    dry_run: bool = False
    locked: bool = False
    verdict: Verdict | None = None
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    results: dict[str, DeployResult] = field(default_factory=dict)
    failures: dict[str, ErrorInfo] = field(default_factory=dict)

    def add(self, event: RolloutEvent) -> None:
        if isinstance(event, RolloutStarted):
            self.service, self.waves = event.service, event.waves
            self.dry_run, self.locked = event.dry_run, event.locked
            self.outcomes = {h: "skipped" for wave in event.waves for h in wave}
        elif isinstance(event, HostFinished):
            self.outcomes[event.host] = event.outcome
            if event.result is not None:
                self.results[event.host] = event.result
            if event.error is not None:
                self.failures[event.host] = event.error
        elif isinstance(event, RolloutFinished):
            self.verdict = event.verdict
            self.outcomes.update(event.hosts)

    @property
    def targeted(self) -> list[str]:
        return sorted(self.outcomes)

    @property
    def replies(self) -> dict[str, DeployResult]:
        return {
            h: self.results[h]
            for h, o in sorted(self.outcomes.items())
            if o not in _FAILED and h in self.results
        }

    @property
    def errors(self) -> dict[str, ErrorInfo]:
        return {
            h: self.failures.get(h) or ErrorInfo(code=ErrorCode.INTERNAL, message="failed")
            for h, o in sorted(self.outcomes.items())
            if o == "failed"
        }

    @property
    def missing(self) -> list[str]:
        return sorted(h for h, o in self.outcomes.items() if o == "missing")

    @property
    def exit_code(self) -> ExitCode:
        return rollout_exit_code(self.outcomes, self.success)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document of one rollout."""
        return {
            "targeted": self.targeted,
            "replies": {h: r.model_dump(mode="json") for h, r in self.replies.items()},
            "errors": {
                h: {"code": str(e.code), "message": e.message, "detail": e.detail}
                for h, e in self.errors.items()
            },
            "missing": self.missing,
            "rollout": {
                "service": self.service,
                "verdict": self.verdict,
                "dry_run": self.dry_run,
                "locked": self.locked,
                "waves": self.waves,
                "hosts": dict(sorted(self.outcomes.items())),
            },
            "exit_code": int(self.exit_code),
        }


async def collect_rollout(
    events: AsyncIterable[RolloutEvent], success: Iterable[str] = DEPLOYED
) -> RolloutReport:
    """Run a rollout to its end and fold its events into a :class:`RolloutReport`."""
    report = RolloutReport(success=frozenset(success))
    async for event in events:
        report.add(event)
    return report


Starter = Callable[[], AsyncGenerator[RolloutEvent, None]]
"""Starts one service's rollout: a call that returns its events (``lambda: fleet.deploy(...)``)."""


@dataclass
class RolloutRun:
    """Several services rolled out one after another (see :func:`run_rollouts`)."""

    reports: list[RolloutReport]
    """One report per service that started, in order."""
    not_run: list[str]
    """Services never started: after one that did not complete, or a held lock."""
    error: str | None = None
    """Why the run stopped early on a lock (held by another rollout, or lost)."""

    @property
    def exit_code(self) -> ExitCode:
        """The worst of the services' codes; an early stop on a lock is a host error."""
        codes = [r.exit_code for r in self.reports]
        if ExitCode.MISSING in codes:
            return ExitCode.MISSING
        if self.error is not None or ExitCode.HOST_ERROR in codes:
            return ExitCode.HOST_ERROR
        if ExitCode.NO_MATCH in codes:
            return ExitCode.NO_MATCH
        return ExitCode.OK


async def run_rollouts(
    rollouts: Sequence[tuple[str, Starter]],
    *,
    success: Iterable[str] = DEPLOYED,
    keep_going: bool = False,
    watch: Callable[[str], AbstractContextManager[Callable[[RolloutEvent], None]]] | None = None,
    on_report: Callable[[RolloutReport], None] | None = None,
) -> RolloutRun:
    """Run rollouts one after another (in the given order, e.g. ``depends_on`` order).

    A service that does not complete stops the ones after it unless ``keep_going``;
    a held or lost lock, or no host matching, stops the run. ``watch(service)`` gives
    a context around each rollout with a callable that sees its events as they come;
    ``on_report`` gets each finished rollout's report.
    """
    done = frozenset(success)
    result = RolloutRun([], [name for name, _ in rollouts])
    for name, start in rollouts:
        result.not_run.remove(name)
        report = RolloutReport(success=done)
        result.reports.append(report)
        try:
            with watch(name) if watch is not None else nullcontext(_ignore) as show:
                async with aclosing(start()) as events:
                    async for event in events:
                        report.add(event)
                        show(event)
        except (LockHeld, LockLost) as exc:
            result.error = exc.message
            if not report.waves:  # never started: the lock was held
                result.reports.pop()
                result.not_run.insert(0, name)
            break
        if not report.outcomes:
            break  # no host matched: the same for every service
        if on_report is not None:
            on_report(report)
        if report.verdict != "completed" and not keep_going:
            break
    return result


def _ignore(event: RolloutEvent) -> None:
    """Events nobody watches."""


# --- the engine -----------------------------------------------------------------------


_ACTION_OUTCOME: dict[DeployAction, Outcome] = {
    DeployAction.CREATED: "created",
    DeployAction.UPDATED: "updated",
    DeployAction.UNCHANGED: "unchanged",
    DeployAction.ROLLED_BACK: "rolled_back",
}


def _restored_revision(error: ErrorInfo) -> int | None:
    value = error.detail.get("restored_revision")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _finished_ok(host: str, result: BaseModel) -> HostFinished:
    if isinstance(result, DeployResult):
        return HostFinished(host, _ACTION_OUTCOME[result.action], result.revision, None, result)
    return HostFinished(host, "removed")  # the one verb of a rollout without a DeployResult


def _finished_error(host: str, error: ErrorInfo) -> HostFinished:
    return HostFinished(host, "failed", _restored_revision(error), error, None)


def _finished_from_reply(verb: Verb, reply: Reply) -> HostFinished | None:
    """The event of a final reply as it arrives; None if only the gathered result can tell."""
    if not reply.ok:
        return _finished_error(reply.host, reply.error) if reply.error is not None else None
    if verb == Verb.REMOVE:
        return HostFinished(reply.host, "removed")
    try:
        result = DeployResult.model_validate(reply.result or {})
    except ValidationError:
        return None  # the gathered result names it as an invalid reply
    return _finished_ok(reply.host, result)


def _finished_from_result(verb: Verb, host: str, result: FleetResult[Any]) -> HostFinished:
    if host in result.replies:
        return _finished_ok(host, result.replies[host])
    if host in result.errors:
        return _finished_error(host, result.errors[host])
    reason = "offline" if host in result.offline else "no answer"
    return HostFinished(
        host, "missing", error=ErrorInfo(code=ErrorCode.TIMEOUT, message=f"missing: {reason}")
    )


async def _settle(task: asyncio.Task[Any]) -> None:
    """Wait for ``task`` to end and log (not raise) what it raised."""
    await asyncio.wait([task])
    if not task.cancelled() and task.exception() is not None:
        log.warning("a wave ended with an error after the rollout stopped: %s", task.exception())


class Rollout:
    """One rollout of one service (build with :meth:`Fleet.deploy` / :meth:`Fleet.rollback`).

    :meth:`events` is an async generator; closing it stops the rollout before the
    next wave (a wave already sent is waited for), and releases the lock.
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        service: str,
        verb: Verb,
        args: BaseModel,
        config: RolloutConfig,
        rollback_config: RolloutConfig,
        selector: Selector | None,
        limit: Limit | None,
        canary: int,
        timeout: float | None,
        health_timeout: float,
        dry_run: bool = False,
        values: Mapping[str, bytes] | None = None,
    ) -> None:
        self.fleet = fleet
        self.values = values or {}
        self.box_keys: dict[str, str] = {}
        self.service = service
        self.verb = verb
        self.args = args
        self.config = config
        self.rollback_config = rollback_config
        self.selector = selector
        self.limit = limit
        self.canary = canary
        self.health_timeout = health_timeout
        self.dry_run = dry_run
        self.timeout = (DEPLOY_TIMEOUT if timeout is None else timeout) + config.monitor
        self.success = DEPLOYED if verb == Verb.DEPLOY else ROLLED_BACK
        wave_size(config.parallelism, 1)  # refuse a bad value before anything is sent
        wave_size(rollback_config.parallelism, 1)
        if canary < 0:
            raise InvalidParallelism(f"invalid canary count {canary}: use 0 or more hosts")

    def _sealed_keys(self) -> list[str]:
        if not isinstance(self.args, DeployArgs):
            return []
        return [m.key for m in self.args.service.secrets if not m.external]

    def _check_sealing(self, targets: Targets) -> None:
        """Refuse before anything is sent when a host could not open its secrets."""
        keys = self._sealed_keys()
        if not keys:
            return
        missing = [k for k in keys if k not in self.values]
        if missing:
            raise SealingError(f"no value given for {', '.join(missing)}")
        keyless = [h for h in targets.online if h not in targets.box_keys]
        if keyless:
            raise SealingError(
                f"host(s) {', '.join(keyless[:10])} announce no box key (an agent older than"
                " secrets, or without PyNaCl), so they cannot take the service's secrets"
            )
        self.box_keys = targets.box_keys

    def _args_for(self, hosts: Sequence[str]) -> BaseModel:
        """The request for one wave: the deploy with its values sealed to each host."""
        keys = self._sealed_keys()
        if not keys or self.dry_run:
            return self.args
        assert isinstance(self.args, DeployArgs)
        sealed = {
            host: {key: seal(self.values[key], self.box_keys[host]) for key in keys}
            for host in hosts
        }
        return self.args.model_copy(update={"sealed": sealed})

    async def events(self) -> AsyncGenerator[RolloutEvent, None]:
        targets = await self.fleet.resolve(self.selector, self.limit)
        if not self.dry_run:
            self._check_sealing(targets)
        waves = plan_waves(
            targets.online, self.config.parallelism, self.canary, offline=targets.offline
        )
        if self.dry_run:
            yield RolloutStarted(self.service, waves, dry_run=True, locked=False)
            outcomes: dict[str, Outcome] = {}
            if targets.all:
                async with aclosing(self._send(self.verb, self.args, targets.all)) as stream:
                    async for event in stream:
                        if isinstance(event, HostFinished):
                            outcomes[event.host] = event.outcome
                        yield event
            yield RolloutFinished(self._verdict(outcomes, stopped=None), outcomes)
            return
        if not waves:
            yield RolloutStarted(self.service, [], locked=False)
            yield RolloutFinished("failed", {})
            return
        async with self.fleet.service_lock(self.service) as lock:
            yield RolloutStarted(self.service, waves, locked=lock.locked)
            async with aclosing(self._waves(waves, lock)) as rollout:
                async for item in rollout:
                    yield item

    async def _waves(
        self, waves: list[list[str]], lock: ServiceLock
    ) -> AsyncGenerator[RolloutEvent, None]:
        outcomes: dict[str, Outcome] = {h: "skipped" for wave in waves for h in wave}
        done: list[str] = []
        stopped: FailureAction | None = None
        for index, wave in enumerate(waves):
            if index and self.config.delay:
                await asyncio.sleep(self.config.delay)  # the configured delay between waves
            if lock.lost:
                raise LockLost(
                    f"the lock of service {self.service!r} was lost (taken over after it "
                    f"expired); stopped before wave {index}"
                )
            yield WaveStarted(index, list(wave))
            async with aclosing(self._send(self.verb, self._args_for(wave), wave)) as stream:
                async for event in stream:
                    if isinstance(event, HostFinished):
                        outcomes[event.host] = event.outcome
                    yield event
            done.extend(wave)
            failed = [h for h in wave if outcomes[h] in _FAILED]
            ratio = sum(outcomes[h] in _FAILED for h in done) / len(done)
            yield WaveFinished(index, failed, round(ratio, 4))
            if not failed:
                continue
            canary_failed = index == 0 and self.canary > 0
            if canary_failed or ratio > self.config.max_failure_ratio:
                stopped = self.config.failure_action
                if stopped == FailureAction.ROLLBACK and self.verb != Verb.DEPLOY:
                    stopped = FailureAction.PAUSE  # a rollback is not rolled back
                if canary_failed and stopped == FailureAction.CONTINUE:
                    stopped = FailureAction.PAUSE
                break
        if stopped == FailureAction.ROLLBACK:
            async with aclosing(self._roll_back(outcomes)) as undo:
                async for item in undo:
                    if isinstance(item, HostFinished):
                        outcomes[item.host] = item.outcome
                    yield item
        yield RolloutFinished(self._verdict(outcomes, stopped), dict(sorted(outcomes.items())))

    def _verdict(self, outcomes: Mapping[str, str], stopped: FailureAction | None) -> Verdict:
        if stopped == FailureAction.ROLLBACK:
            return "rolled_back"
        if stopped == FailureAction.PAUSE:
            return "paused"
        if stopped is None and outcomes and all(o in self.success for o in outcomes.values()):
            return "completed"
        return "failed"

    async def _roll_back(
        self, outcomes: Mapping[str, Outcome]
    ) -> AsyncGenerator[RolloutEvent, None]:
        """Undo this rollout on the hosts it changed, in waves of ``rollback_config``."""
        updated = sorted(h for h, o in outcomes.items() if o == "updated")
        created = sorted(h for h, o in outcomes.items() if o == "created")
        yield RollbackStarted(sorted([*updated, *created]))
        config = self.rollback_config
        back = RollbackArgs(
            service=self.service,
            order=config.order,
            monitor=config.monitor,
            health_timeout=self.health_timeout,
        )
        remove = RemoveArgs(service=self.service)
        for index, wave in enumerate(plan_waves([*updated, *created], config.parallelism)):
            if index and config.delay:
                await asyncio.sleep(config.delay)  # the configured delay between waves
            for verb, args, hosts in (
                (Verb.ROLLBACK, back, [h for h in wave if h in updated]),
                (Verb.REMOVE, remove, [h for h in wave if h in created]),
            ):
                if not hosts:
                    continue
                async with aclosing(self._send(verb, args, hosts)) as stream:
                    async for event in stream:
                        yield event

    async def _send(
        self, verb: Verb, args: BaseModel, hosts: list[str]
    ) -> AsyncGenerator[HostProgress | HostFinished, None]:
        """One request to ``hosts``: their progress as it comes, then one answer per host.

        Closed early, it waits for the hosts already asked (bounded by the timeout), so
        that nothing is left running when the lock is released.
        """
        expected = set(hosts)
        finished: set[str] = set()
        queue: asyncio.Queue[HostProgress | HostFinished | None] = asyncio.Queue()

        def on_progress(progress: Progress) -> None:
            queue.put_nowait(
                HostProgress(
                    progress.host,
                    progress.phase,
                    progress.message,
                    progress.current,
                    progress.total,
                )
            )

        def on_reply(reply: Reply) -> None:
            event = _finished_from_reply(verb, reply)
            if event is not None:
                queue.put_nowait(event)

        task = asyncio.create_task(
            self.fleet.request(
                verb,
                args,
                selector=Selector(hosts=tuple(sorted(expected))),
                timeout=self.timeout,
                on_progress=on_progress,
                on_reply=on_reply,
            ),
            name=f"{verb}-{self.service}",
        )
        task.add_done_callback(lambda _task: queue.put_nowait(None))
        try:
            while (event := await queue.get()) is not None:
                if event.host not in expected or event.host in finished:
                    continue
                if isinstance(event, HostFinished):
                    finished.add(event.host)
                yield event
        except GeneratorExit:
            await _settle(task)  # the consumer stopped mid-wave: let the wave end
            raise
        finally:
            if not task.done():
                task.cancel()
                await _settle(task)
        result = task.result()
        for host in sorted(expected - finished):
            yield _finished_from_result(verb, host, result)


def deploy_rollout(
    fleet: Fleet,
    spec: ServiceSpec,
    *,
    selector: Selector | None = None,
    limit: Limit | None = None,
    config: RolloutConfig | None = None,
    rollback_config: RolloutConfig | None = None,
    canary: int = 0,
    timeout: float | None = None,
    health_timeout: float = 300.0,
    dry_run: bool = False,
    values: Mapping[str, bytes] | None = None,
    wait_for: Literal["running", "completed"] = "running",
) -> AsyncGenerator[RolloutEvent, None]:
    """The events of a rolling deploy of ``spec`` (see :meth:`Fleet.deploy`)."""
    config = config or RolloutConfig()
    args = DeployArgs(
        service=spec,
        order=config.order,
        monitor=config.monitor,
        health_timeout=health_timeout,
        dry_run=dry_run,
        wait_for=wait_for,
    )
    return Rollout(
        fleet,
        service=spec.name,
        verb=Verb.DEPLOY,
        args=args,
        config=config,
        rollback_config=rollback_config or config,
        selector=selector,
        limit=limit,
        canary=canary,
        timeout=timeout,
        health_timeout=health_timeout,
        dry_run=dry_run,
        values=values,
    ).events()


def rollback_rollout(
    fleet: Fleet,
    service: str,
    *,
    selector: Selector | None = None,
    limit: Limit | None = None,
    config: RolloutConfig | None = None,
    canary: int = 0,
    timeout: float | None = None,
    health_timeout: float = 300.0,
) -> AsyncGenerator[RolloutEvent, None]:
    """The events of a rolling rollback of ``service`` (see :meth:`Fleet.rollback`)."""
    config = config or RolloutConfig()
    args = RollbackArgs(
        service=service, order=config.order, monitor=config.monitor, health_timeout=health_timeout
    )
    return Rollout(
        fleet,
        service=service,
        verb=Verb.ROLLBACK,
        args=args,
        config=config,
        rollback_config=config,
        selector=selector,
        limit=limit,
        canary=canary,
        timeout=timeout,
        health_timeout=health_timeout,
    ).events()
