"""``shoal agents``: the fleet inventory; ``shoal agents forget HOST``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from shoal.protocol import InvalidHostId, validate_host_id

from ..registry import AgentRecord
from ..result import ExitCode
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
    make_fleet,
    print_json,
    print_rows,
    run,
    usage_error,
)

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
