"""``shoal ps``: containers across the fleet, in docker ps columns plus HOST."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from shoal.protocol import PsArgs, PsResult
from shoal.protocol.envelope import summarize_validation_error

from ..fleet import DEFAULT_TIMEOUT
from ..result import FleetResult
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    RetriesOpt,
    ServerOpt,
    TimeoutOpt,
    ago,
    ask_fleet,
    build_limit,
    build_selector,
    print_rows,
    show_result,
    usage_error,
)

FILTER_KEYS = ("name", "label", "status", "image", "ancestor")


def parse_filters(filters: list[str] | None, all_: bool) -> PsArgs:
    """``--filter k=v`` as docker takes it: name, label, status, image (alias ancestor)."""
    values: dict[str, list[str]] = {"name": [], "label": [], "status": [], "image": []}
    for item in filters or []:
        key, sep, value = item.partition("=")
        if not sep or key not in FILTER_KEYS or not value:
            usage_error(
                f"invalid filter {item!r}: use name=, label=, status= or image= "
                "(e.g. status=exited)"
            )
        values["image" if key == "ancestor" else key].append(value)
    try:
        return PsArgs.model_validate({"all": all_, **values})
    except ValidationError as exc:
        usage_error(f"invalid filter: {summarize_validation_error(exc)}")


def _command(command: str, width: int = 22) -> str:
    shown = command if len(command) <= width else command[: width - 1] + "…"
    return f'"{shown}"'


PS_COLUMNS = ("HOST", "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")


def render_ps(result: FleetResult[PsResult]) -> None:
    rows = [
        (
            host,
            c.id[:12],
            c.image,
            _command(c.command),
            ago(c.created),
            c.status,
            ", ".join(str(p) for p in c.ports),
            c.name,
        )
        for host, reply in sorted(result.replies.items())
        for c in sorted(reply.containers, key=lambda c: c.created, reverse=True)
    ]
    print_rows(PS_COLUMNS, rows)


def ps(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Show all containers (default shows running).")
    ] = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            metavar="KEY=VALUE",
            help="Filter: name=, label=k[=v], status=, image= (repeatable).",
        ),
    ] = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    retries: RetriesOpt = 0,
    json_: JsonOpt = False,
) -> None:
    """List containers on every targeted host, in one table."""
    args = parse_filters(filter_, all_)
    target = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.ps(args, selector=target, limit=sample, retries=retries),
    )
    show_result(result, render_ps, json_=json_)
