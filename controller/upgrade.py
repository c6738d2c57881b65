"""Upgrading the agents themselves, in waves (``shoal agents upgrade``).

Each host's agent gets an ``upgrade`` request (admin role): an agent in a container pulls
the new image and starts a helper container that swaps it for the new one, restoring the
old one unless the new agent turns healthy in time (agent/docker/upgrade.py). The host
is then followed here until its outcome is known: the helper's exit code (read with
``inspect`` from whichever agent answers) and a heartbeat from the agent that runs now,
with the expected version. Hosts go in waves (``parallel``, an optional canary wave
first); a wave with a failure pauses the rest, or goes on, or puts the hosts upgraded so
far back on their old image (``failure_action``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from shoal.protocol import (
    AgentFacts,
    FailureAction,
    Selector,
    UpgradeArgs,
    UpgradeResult,
    Verb,
)

from .errors import FleetError
from .fleet import Fleet
from .registry import AgentRecord
from .result import ExitCode
from .rollout import plan_waves
from .targeting import resolve_targets
from .transport import Message

Outcome = Literal[
    "upgraded", "unchanged", "rolled_back", "failed", "missing", "skipped", "reverted", "dry_run"
]
SUCCESS: frozenset[str] = frozenset({"upgraded", "unchanged", "dry_run"})
FOLLOW_EXTRA = 60.0
"""Seconds past the helper's deadline to wait for the host's outcome."""
POLL = 1.0


@dataclass
class HostUpgrade:
    """How one host's upgrade went."""

    host: str
    outcome: Outcome
    reason: str = ""
    mode: str = ""
    """container (a helper swapped containers) or process (a restart into a new venv)."""
    old_version: str = ""
    version: str = ""
    old_image: str = ""
    image: str = ""
    helper: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "outcome": self.outcome,
            "reason": self.reason,
            "mode": self.mode,
            "old_version": self.old_version,
            "version": self.version,
            "old_image": self.old_image,
            "image": self.image,
            "helper": self.helper,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class UpgradeReport:
    hosts: dict[str, HostUpgrade] = field(default_factory=dict)
    paused: bool = False

    @property
    def exit_code(self) -> ExitCode:
        if not self.hosts:
            return ExitCode.NO_MATCH
        outcomes = [h.outcome for h in self.hosts.values()]
        if "missing" in outcomes:
            return ExitCode.MISSING
        if any(o not in SUCCESS for o in outcomes):
            return ExitCode.HOST_ERROR
        return ExitCode.OK

    def to_json(self) -> dict[str, object]:
        return {
            "hosts": [self.hosts[h].to_json() for h in sorted(self.hosts)],
            "paused": self.paused,
            "exit_code": int(self.exit_code),
        }


Say = Callable[[str, str], None]
"""``say(host, message)``: a step of a host's upgrade, as it happens."""


async def upgrade_agents(
    fleet: Fleet,
    *,
    image: str | None = None,
    version: str | None = None,
    selector: Selector | None = None,
    parallel: str | int = "1",
    canary: int = 0,
    failure_action: FailureAction = FailureAction.PAUSE,
    deadline: float = 120.0,
    pull: Literal["missing", "always"] = "missing",
    dry_run: bool = False,
    say: Say | None = None,
) -> UpgradeReport:
    """Upgrade the selected hosts' agents in waves; see the module's docstring."""
    args = UpgradeArgs(image=image, version=version, deadline=deadline, pull=pull, dry_run=dry_run)
    tell: Say = say or (lambda host, message: None)
    known = await fleet.agents()  # one registry read: the targets and their instances
    targets = resolve_targets(known, selector or Selector())
    records = {r.host_id: r for r in known}
    report = UpgradeReport()
    online = targets.online
    for host in targets.offline:
        report.hosts[host] = HostUpgrade(host, "missing", "offline: nothing was sent")
    todo = []
    for host in online:
        facts = records[host].facts if host in records else None
        if version and facts is not None and facts.agent_version == version and not image:
            report.hosts[host] = HostUpgrade(
                host, "unchanged", f"already on {version}", facts.agent_version, version
            )
        else:
            todo.append(host)
    upgraded: list[HostUpgrade] = []
    waves = plan_waves(todo, parallel, canary)
    for number, wave in enumerate(waves):
        results = await asyncio.gather(
            *(_one(fleet, host, args, records.get(host), tell) for host in wave)
        )
        for result in results:
            report.hosts[result.host] = result
            if result.outcome == "upgraded":
                upgraded.append(result)
        if all(r.outcome in SUCCESS for r in results) or number == len(waves) - 1:
            continue
        if failure_action == FailureAction.CONTINUE:
            continue
        report.paused = True
        for later in waves[number + 1 :]:
            for host in later:
                report.hosts[host] = HostUpgrade(host, "skipped", "an earlier wave failed")
        if failure_action == FailureAction.ROLLBACK:
            await _revert(fleet, upgraded, args, records, tell, report)
        break
    return report


async def _revert(
    fleet: Fleet,
    upgraded: Sequence[HostUpgrade],
    args: UpgradeArgs,
    records: dict[str, AgentRecord],
    tell: Say,
    report: UpgradeReport,
) -> None:
    """Put the hosts upgraded so far back on the image they ran before."""
    for done in upgraded:
        if done.mode == "process":
            tell(done.host, f"reverting to {done.old_version}")
            back = UpgradeArgs(version=done.old_version, deadline=args.deadline)
        else:
            tell(done.host, f"reverting to {done.old_image}")
            back = UpgradeArgs(image=done.old_image, deadline=args.deadline, pull="missing")
        record = await _record(fleet, done.host)
        result = await _one(fleet, done.host, back, record, tell)
        if result.outcome == "upgraded":
            report.hosts[done.host] = HostUpgrade(
                done.host,
                "reverted",
                "put back after a later wave failed",
                done.mode,
                done.old_version,
                result.version,
                done.image,
                done.old_image,
                result.helper,
                done.seconds + result.seconds,
            )
        else:
            done.reason = f"could not be put back: {result.reason or result.outcome}"


async def _record(fleet: Fleet, host: str) -> AgentRecord | None:
    return next((r for r in await fleet.agents() if r.host_id == host), None)


async def _one(
    fleet: Fleet, host: str, args: UpgradeArgs, record: AgentRecord | None, tell: Say
) -> HostUpgrade:
    """Upgrade one host and follow it to its outcome."""
    started = time.monotonic()
    before = record.facts.instance if record is not None else ""
    beats: asyncio.Queue[AgentFacts] = asyncio.Queue()

    async def on_beat(msg: Message) -> None:
        with contextlib.suppress(ValidationError):
            beat = AgentFacts.model_validate_json(msg.data)
            if beat.host_id == host:
                beats.put_nowait(beat)

    subscription = await fleet.nc.subscribe(fleet.subjects.heartbeat(host), on_beat)
    try:
        sent = await fleet.request(
            Verb.UPGRADE,
            args,
            selector=Selector(hosts=(host,)),
            timeout=max(fleet.timeout, 330.0),  # a pull of the new image comes first
        )
        if host in sent.errors:
            error = sent.errors[host]
            tell(host, f"refused: {error.message}")
            return HostUpgrade(host, "failed", f"{error.code}: {error.message}", seconds=0.0)
        if host not in sent.replies:
            return HostUpgrade(host, "missing", "did not answer the upgrade request")
        answer: UpgradeResult = sent.replies[host]
        before = answer.instance or before  # the registry's may be older than the answer
        outcome = HostUpgrade(
            host,
            "dry_run" if answer.dry_run else "failed",
            mode=answer.mode,
            old_version=answer.old_version,
            old_image=answer.old_image,
            image=answer.new_image,
            helper=answer.helper,
        )
        if answer.mode == "process":
            if answer.dry_run:
                tell(host, f"would install {args.version} in {answer.venv} and restart into it")
                return outcome
            tell(host, f"installed {args.version} in {answer.venv}; restarting into it")
            await _follow_restart(outcome, args, before, beats, tell)
            outcome.seconds = time.monotonic() - started
            return outcome
        if answer.dry_run:
            tell(host, f"would replace {answer.old_image} with {answer.new_image}")
            return outcome
        tell(
            host, f"helper {answer.helper[:12]} replaces {answer.old_image} with {answer.new_image}"
        )
        await _follow(fleet, outcome, args, before, beats, tell)
        outcome.seconds = time.monotonic() - started
        return outcome
    finally:
        await subscription.unsubscribe()


async def _follow(
    fleet: Fleet,
    outcome: HostUpgrade,
    args: UpgradeArgs,
    before: str,
    beats: asyncio.Queue[AgentFacts],
    tell: Say,
) -> None:
    """Wait for the helper's exit code and a heartbeat of the agent that runs after it."""
    host = outcome.host
    end = time.monotonic() + args.deadline + FOLLOW_EXTRA
    code: int | None = None
    latest: AgentFacts | None = None
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL):
                beat = await beats.get()
                if beat.status == "online" and beat.instance != before:
                    latest = beat
        if code is None:
            code = await _helper_exit(fleet, host, outcome.helper)
            if code is not None:
                tell(host, f"helper exited {code}")
        if code is not None and (latest is not None or code >= 2):
            break
    if code is None:
        outcome.outcome = "missing"
        outcome.reason = "no outcome within the deadline (the helper is still running or lost)"
        return
    outcome.version = latest.agent_version if latest is not None else outcome.old_version
    if code == 0 and latest is None:
        outcome.outcome = "missing"
        outcome.reason = "upgraded, but the new agent has not sent a heartbeat"
    elif code == 0 and args.version and latest is not None and latest.agent_version != args.version:
        outcome.reason = f"the new agent reports {latest.agent_version}, not {args.version}"
    elif code == 0:
        outcome.outcome = "upgraded"
        tell(host, f"upgraded to {outcome.version}")
    else:
        outcome.outcome = "rolled_back" if code == 1 else "failed"
        outcome.reason = await _helper_reason(fleet, host, outcome.helper, code)
        tell(host, f"{outcome.outcome.replace('_', ' ')}: {outcome.reason}")


async def _follow_restart(
    outcome: HostUpgrade,
    args: UpgradeArgs,
    before: str,
    beats: asyncio.Queue[AgentFacts],
    tell: Say,
) -> None:
    """Wait for a heartbeat of the agent that runs after the restart: the new version
    (upgraded), or the old one again, which says why (rolled back)."""
    host = outcome.host
    try:
        async with asyncio.timeout(args.deadline + FOLLOW_EXTRA):
            while True:
                beat = await beats.get()
                if beat.status != "online" or beat.instance == before:
                    continue
                if beat.agent_version == args.version:
                    outcome.outcome, outcome.version = "upgraded", beat.agent_version
                    tell(host, f"upgraded to {outcome.version}")
                    return
                if beat.agent_version == outcome.old_version and beat.upgrade_failed:
                    outcome.outcome, outcome.version = "rolled_back", beat.agent_version
                    outcome.reason = beat.upgrade_failed
                    tell(host, f"rolled back: {outcome.reason}")
                    return
                # A restart of the old version without a word (on trial no more: it was
                # pointed back by hand, or never left), or a version nobody asked for.
                outcome.version = beat.agent_version
                outcome.reason = f"the agent came back on {beat.agent_version}, not {args.version}"
                return
    except TimeoutError:
        outcome.outcome = "missing"
        outcome.reason = (
            f"no heartbeat from the restarted agent within {args.deadline + FOLLOW_EXTRA:.0f} s"
        )


async def _helper_exit(fleet: Fleet, host: str, helper: str) -> int | None:
    """The helper's exit code once it has exited; None while it runs or nobody answers."""
    try:
        result = await fleet.inspect(helper, selector=Selector(hosts=(host,)), timeout=3.0)
    except FleetError:
        return None
    reply = result.replies.get(host)
    if reply is None:
        return None
    state = reply.details.get("State") or {}
    if state.get("Running") or state.get("Status") not in ("exited", "dead"):
        return None
    return int(state.get("ExitCode") or 0)


async def _helper_reason(fleet: Fleet, host: str, helper: str, code: int) -> str:
    """The helper's last words: why the new agent was not kept."""
    try:
        result = await fleet.logs(helper, tail=12, selector=Selector(hosts=(host,)), timeout=5.0)
    except FleetError:
        result = None
    lines = [] if result is None or host not in result.replies else result.replies[host].lines
    texts = [line.text.split(" ", 1)[-1] for line in lines]
    reasons = [t for t in texts if not t.startswith(("new agent |", "stopping", "starting"))]
    return "; ".join(reasons[-2:]) or f"the helper exited {code}"
