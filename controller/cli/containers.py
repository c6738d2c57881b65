"""Container commands: ``shoal inspect``, ``start``, ``stop``, ``restart`` and ``rm``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from shoal.protocol import (
    ContainerActionResult,
    InspectResult,
    Selector,
)

from ..fleet import DEFAULT_TIMEOUT, Fleet
from ..result import ExitCode, FleetResult
from ..targeting import Limit
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    RetriesOpt,
    ServerOpt,
    TimeoutOpt,
    ask_fleet,
    build_limit,
    build_selector,
    err,
    finish,
    make_fleet,
    out,
    render_footer,
    run,
    show_result,
    with_progress,
)
from .shared import (
    Action,
    TargetArg,
    YesOpt,
    check_target,
    confirm_or_refuse,
)

# --- inspect and info ---------------------------------------------------------------------


def render_inspect(result: FleetResult[InspectResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = (
        "HOST",
        "CONTAINER ID",
        "NAME",
        "IMAGE",
        "STATE",
        "HEALTH",
        "STARTED",
        "RESTARTS",
        "SERVICE",
    )
    for column in columns:
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        details = reply.details
        state = details.get("State") or {}
        health = (state.get("Health") or {}).get("Status", "")
        table.add_row(
            host,
            reply.container.id[:12],
            reply.container.name,
            str((details.get("Config") or {}).get("Image", "")),
            str(state.get("Status", "")),
            health or "-",
            str(state.get("StartedAt", ""))[:19].replace("T", " ") or "-",
            str(details.get("RestartCount", 0)),
            reply.container.service or "-",
        )
    out.print(table)


def inspect(
    ctx: typer.Context,
    target: TargetArg,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    retries: RetriesOpt = 0,
    json_: Annotated[
        bool,
        typer.Option("--json", help="The full inspect document of every host, in one document."),
    ] = False,
) -> None:
    """Inspect a container, or a service's current container, on every targeted host.

    A summary table; with --json the engine's full inspect document per host.
    """
    check_target(target)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.inspect(target, selector=selection, limit=sample, retries=retries),
    )
    show_result(result, render_inspect, json_=json_)


# --- start, stop, restart, rm -------------------------------------------------------------

ActionAwaitable = Awaitable[FleetResult[ContainerActionResult]]
ActionCall = Callable[[Fleet, Selector, Limit | None], ActionAwaitable]

_DOING = {"start": "start", "stop": "stop", "restart": "restart", "rm": "remove"}


def render_preview(result: FleetResult[InspectResult]) -> None:
    """What a container action would touch, on stderr (stdout stays for the result)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "CONTAINER ID", "NAME", "STATE", "SERVICE"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        c = reply.container
        table.add_row(host, c.id[:12], c.name, c.state, c.service or "-")
    err.print(table)
    render_footer(result)


def render_action(result: FleetResult[ContainerActionResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "CONTAINER ID", "NAME", "SERVICE", "BEFORE", "AFTER"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        c = reply.container
        table.add_row(
            host,
            c.id[:12],
            c.name,
            c.service or "-",
            reply.before,
            Text(reply.after, "green" if reply.changed else "dim"),
        )
    out.print(table)


def run_container_action(
    ctx: typer.Context,
    action: Action,
    target: str,
    call: ActionCall,
    *,
    yes: bool,
    host: list[str] | None,
    selector: list[str] | None,
    limit: str | None,
    server: str | None,
    timeout: float,
    json_: bool,
) -> None:
    """The flow every container action shares: confirm on a terminal, act, report."""
    check_target(target)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    doing = _DOING[action]
    if confirm_or_refuse(yes, f"{doing} containers"):

        async def look() -> FleetResult[InspectResult]:
            async with make_fleet(ctx, server, timeout) as fleet:
                return await with_progress(
                    "asking the fleet…",
                    lambda: fleet.inspect(target, selector=selection, limit=sample),
                )

        preview = run(look())
        render_preview(preview)
        if not preview.replies:
            finish(preview)
        hosts = len(preview.replies)
        question = f"{doing.capitalize()} {target} on {hosts} host{'s' if hosts != 1 else ''}?"
        if not typer.confirm(question, default=False, err=True):
            err.print("aborted; nothing changed")
            raise typer.Exit(int(ExitCode.OK))
        selection, sample = Selector(hosts=tuple(preview.targeted)), None

    result = ask_fleet(
        ctx, server, timeout, lambda fleet: call(fleet, selection, sample), label=f"{doing}…"
    )
    show_result(result, render_action, json_=json_)


StopTimeOpt = Annotated[
    int | None,
    typer.Option(
        "--time",
        min=0,
        max=3600,
        metavar="SECONDS",
        help="Seconds to wait for the container to stop before killing it. "
        "\\[default: the container's own stop timeout]",
        show_default=False,
    ),
]


def start(
    ctx: typer.Context,
    target: TargetArg,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Start a container, or a service's current container, on every targeted host.

    Needs the operator role. Asks first on a terminal; needs --yes without one.
    """

    def call(fleet: Fleet, sel: Selector, lim: Limit | None) -> ActionAwaitable:
        return fleet.start_container(target, selector=sel, limit=lim)

    run_container_action(
        ctx,
        "start",
        target,
        call,
        yes=yes,
        host=host,
        selector=selector,
        limit=limit,
        server=server,
        timeout=timeout,
        json_=json_,
    )


def stop(
    ctx: typer.Context,
    target: TargetArg,
    time_: StopTimeOpt = None,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Stop a container, or a service's current container, on every targeted host.

    Needs the operator role. Asks first on a terminal; needs --yes without one.
    """

    def call(fleet: Fleet, sel: Selector, lim: Limit | None) -> ActionAwaitable:
        return fleet.stop_container(target, stop_timeout=time_, selector=sel, limit=lim)

    run_container_action(
        ctx,
        "stop",
        target,
        call,
        yes=yes,
        host=host,
        selector=selector,
        limit=limit,
        server=server,
        timeout=timeout,
        json_=json_,
    )


def restart(
    ctx: typer.Context,
    target: TargetArg,
    time_: StopTimeOpt = None,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Restart a container, or a service's current container, on every targeted host.

    Needs the operator role. Asks first on a terminal; needs --yes without one.
    """

    def call(fleet: Fleet, sel: Selector, lim: Limit | None) -> ActionAwaitable:
        return fleet.restart_container(target, stop_timeout=time_, selector=sel, limit=lim)

    run_container_action(
        ctx,
        "restart",
        target,
        call,
        yes=yes,
        host=host,
        selector=selector,
        limit=limit,
        server=server,
        timeout=timeout,
        json_=json_,
    )


def rm(
    ctx: typer.Context,
    target: TargetArg,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Remove a running container (kill it).")
    ] = False,
    volumes: Annotated[
        bool, typer.Option("--volumes", "-v", help="Remove its anonymous volumes too.")
    ] = False,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Remove a container, or a service's current container, on every targeted host.

    Needs the admin role. A service keeps its record: `shoal services` shows it
    missing, `shoal deploy` brings it back. Asks first on a terminal; needs --yes
    without one.
    """

    def call(fleet: Fleet, sel: Selector, lim: Limit | None) -> ActionAwaitable:
        return fleet.remove_container(target, force=force, volumes=volumes, selector=sel, limit=lim)

    run_container_action(
        ctx,
        "rm",
        target,
        call,
        yes=yes,
        host=host,
        selector=selector,
        limit=limit,
        server=server,
        timeout=timeout,
        json_=json_,
    )
