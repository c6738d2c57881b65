"""``shoal agents``: the fleet inventory; ``shoal agents forget HOST``."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from shoal.protocol import (
    FailureAction,
    InvalidHostId,
    UpgradeArgs,
    validate_host_id,
)
from shoal.protocol.envelope import summarize_validation_error

from ..registry import AgentRecord
from ..result import ExitCode
from ..rollout import InvalidParallelism, wave_size
from ..upgrade import UpgradeReport, upgrade_agents
from .common import (
    Cell,
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    Part,
    ServerOpt,
    ago,
    build_selector,
    err,
    error,
    make_fleet,
    print_json,
    print_rows,
    run,
    usage_error,
)
from .shared import YesOpt

CLOCK_WARN = 2.0
"""Seconds of clock difference from the NATS server beyond which CLOCK is shown."""

app = typer.Typer(
    help="The fleet inventory: every known host, online or offline.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def record_json(record: AgentRecord) -> dict[str, Any]:
    return {
        "host_id": record.host_id,
        "state": record.state,
        "online": record.online,
        "last_seen": record.last_seen.isoformat(),
        "clock_skew": round(record.clock_skew, 3),
        "facts": record.facts.model_dump(mode="json"),
    }


AGENT_COLUMNS = ("HOST", "STATE", "LAST SEEN", "CLOCK", "ARCH", "OS", "DOCKER", "LABELS", "AGENT")


def agent_row(r: AgentRecord) -> list[Cell]:
    f = r.facts
    arch = f"{f.arch}/{f.variant}" if f.variant else f.arch
    skew = r.clock_skew
    agent: list[Part] = [f.agent_version]
    if f.insecure:
        agent.append((" INSECURE", "bold red"))
    return [
        r.host_id,
        (r.state, "green" if r.online else "red"),
        ago(r.last_seen),
        "ok" if abs(skew) < CLOCK_WARN else (f"{skew:+.0f}s", "yellow"),
        arch,
        f.os,
        (f.docker.version or "?") if f.docker.reachable else ("unreachable", "red"),
        ",".join(f"{k}={v}" for k, v in sorted(f.labels.items())),
        agent,
    ]


def render_agents(records: list[AgentRecord]) -> None:
    print_rows(AGENT_COLUMNS, [agent_row(r) for r in records])


@app.callback()
def agents(
    ctx: typer.Context,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List every known host with its state, last-seen time and facts."""
    if ctx.invoked_subcommand is not None:
        return
    target = build_selector(host, selector)
    fleet = make_fleet(ctx, server)

    async def work() -> list[AgentRecord]:
        async with fleet:
            return await fleet.agents()

    records = [r for r in run(work()) if target.matches(r.host_id, r.facts.selectable())]
    if json_:
        print_json({"agents": [record_json(r) for r in records]})
    else:
        render_agents(records)
        online = sum(r.online for r in records)
        err.say(f"{len(records)} hosts, {online} online, {len(records) - online} offline")
    if not records and not target.is_everything:
        raise typer.Exit(int(ExitCode.NO_MATCH))


@app.command()
def forget(
    ctx: typer.Context,
    host_id: Annotated[str, typer.Argument(metavar="HOST", help="Host id to forget.")],
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Forget an offline host: it leaves the inventory until it heartbeats again."""
    try:
        validate_host_id(host_id)
    except InvalidHostId as exc:
        usage_error(exc.message)
    fleet = make_fleet(ctx, server)

    async def work() -> bool:
        async with fleet:
            online = any(r.host_id == host_id and r.online for r in await fleet.agents())
            if online:
                err.say(
                    ("warning:", "yellow"),
                    f" {host_id} is online; it will reappear with its next heartbeat",
                )
            return await fleet.forget(host_id)

    known = run(work())
    if json_:
        print_json({"host_id": host_id, "forgotten": known})
    elif known:
        err.say(f"forgot {host_id}")
    else:
        err.say((f"{host_id} was not known", "yellow"))
    if not known:
        raise typer.Exit(int(ExitCode.NO_MATCH))


UPGRADE_COLUMNS = ("HOST", "OUTCOME", "VERSION", "IMAGE", "TIME", "REASON")
OUTCOME_STYLE = {
    "upgraded": "green",
    "unchanged": "green",
    "dry_run": "cyan",
    "rolled_back": "red",
    "failed": "red",
    "missing": "red",
    "skipped": "yellow",
    "reverted": "yellow",
}


@app.command()
def upgrade(
    ctx: typer.Context,
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            metavar="V",
            help="The agent version to run: in a container, the agent's own image with tag V "
            "unless --image is given (then V is the version the new agent must report); "
            "under systemd, the package shoal==V installed in a new venv.",
            show_default=False,
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option("--image", metavar="IMAGE", help="The new agent image.", show_default=False),
    ] = None,
    parallel: Annotated[
        str,
        typer.Option("--parallel", metavar="N|N%", help="Hosts per wave: N or N% (0: all)."),
    ] = "1",
    canary: Annotated[
        int,
        typer.Option(
            "--canary",
            metavar="N",
            min=0,
            help="Upgrade N hosts first, alone; a failure there stops the upgrade.",
        ),
    ] = 0,
    failure_action: Annotated[
        FailureAction,
        typer.Option(
            "--failure-action",
            help="After a wave with a failure: pause (upgrade no more hosts), continue (go on) "
            "or rollback (also put the hosts upgraded so far back on their old image).",
            case_sensitive=False,
        ),
    ] = FailureAction.PAUSE,
    deadline: Annotated[
        float,
        typer.Option(
            "--deadline",
            metavar="SECONDS",
            min=1.0,
            max=3600.0,
            help="How long a new agent has to turn healthy before the old one is restored.",
        ),
    ] = 120.0,
    always_pull: Annotated[
        bool, typer.Option("--pull", help="Pull the image even if the host has it.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and pull on every host; replace nothing.")
    ] = False,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upgrade the agents themselves, in waves (needs the admin role).

    An agent in a container starts a helper container that replaces it with the new
    image (same settings, mounts and networks) and restores the old one unless the new
    agent is healthy (and reports --version) within --deadline. An agent under systemd,
    installed as one venv per version (docs/operations.md), installs shoal==V into a new
    venv beside its own, checks it, and restarts into it; unless the new agent heartbeats
    within --deadline, the old one is put back. Each host is followed until its agent
    heartbeats again. Without --yes it asks first; without a terminal it refuses unless
    given --yes. Exit 0: every host upgraded (or already on --version);
    1: some failed or rolled back; 4: some did not answer.
    """
    if version is None and image is None:
        usage_error("give --version V, --image IMAGE, or both")
    try:
        wave_size(parallel, 1)
    except InvalidParallelism as exc:
        usage_error(f"--parallel: {exc.message}")
    try:
        UpgradeArgs(image=image, version=version, deadline=deadline)
    except ValidationError as exc:
        usage_error(summarize_validation_error(exc))
    target = build_selector(host, selector)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not dry_run and not yes:
        if not interactive:
            error("refusing to upgrade agents without --yes when not on a terminal")
            raise typer.Exit(int(ExitCode.USAGE))
        what = image or f"version {version}"
        if not typer.confirm(f"Replace the selected hosts' agents with {what}?", err=True):
            err.say("aborted; nothing upgraded")
            raise typer.Exit(int(ExitCode.OK))
    fleet = make_fleet(ctx, server)

    def say(host_id: str, message: str) -> None:
        err.say((host_id, "bold"), f" | {message}")

    async def work() -> UpgradeReport:
        async with fleet:
            return await upgrade_agents(
                fleet,
                image=image,
                version=version,
                selector=target,
                parallel=parallel,
                canary=canary,
                failure_action=failure_action,
                deadline=deadline,
                pull="always" if always_pull else "missing",
                dry_run=dry_run,
                say=say,
            )

    report = run(work())
    if json_:
        print_json(report.to_json())
    else:
        rows: list[list[Cell]] = []
        for h in sorted(report.hosts):
            item = report.hosts[h]
            versions = (
                f"{item.old_version} -> {item.version}"
                if item.version and item.version != item.old_version
                else item.version or item.old_version
            )
            rows.append(
                [
                    h,
                    (item.outcome, OUTCOME_STYLE.get(item.outcome, "")),
                    versions,
                    item.image or item.mode,
                    f"{item.seconds:.0f}s" if item.seconds else "",
                    item.reason,
                ]
            )
        print_rows(UPGRADE_COLUMNS, rows)
        if report.paused:
            err.say(("paused:", "yellow"), " a wave failed; later hosts were not upgraded")
    raise typer.Exit(int(report.exit_code))
