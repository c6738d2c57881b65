"""``shoal logs``: the last lines of a container or service on every host, or followed."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.text import Text

from shoal.protocol import (
    MAX_LOG_LINES,
    LogLine,
    LogsResult,
)

from ..fleet import DEFAULT_TIMEOUT
from ..result import FleetResult
from .common import (
    HostsOpt,
    LabelsOpt,
    LimitOpt,
    ServerOpt,
    TimeoutOpt,
    ask_fleet,
    build_limit,
    build_selector,
    finish,
    make_fleet,
    out,
    render_footer,
    run,
    show_result,
)
from .shared import (
    SinceOpt,
    TargetArg,
    check_target,
    host_style,
    interruptible,
    is_terminal,
    since_seconds,
)

# --- logs ---------------------------------------------------------------------------------


class LinePrinter:
    """Prints log lines prefixed by host (colored on a terminal), or as JSON lines."""

    def __init__(self, *, timestamps: bool, json_lines: bool) -> None:
        self.timestamps = timestamps
        self.json_lines = json_lines
        self.color = is_terminal()
        self.width = 0

    def print(self, host: str, lines: list[LogLine]) -> None:
        self.width = max(self.width, len(host))
        for line in lines:
            if self.json_lines:
                document = {
                    "type": "line",
                    "host": host,
                    "time": line.time.isoformat() if line.time else None,
                    "text": line.text,
                }
                sys.stdout.write(json.dumps(document) + "\n")
                continue
            stamp = f"{line.time.isoformat()} " if self.timestamps and line.time else ""
            if self.color:
                out.print(
                    Text.assemble((host.ljust(self.width), host_style(host)), " | ", stamp),
                    Text(line.text),
                    sep="",
                    soft_wrap=True,
                )
            else:
                sys.stdout.write(f"{host.ljust(self.width)} | {stamp}{line.text}\n")
        sys.stdout.flush()


def merged_lines(result: FleetResult[LogsResult]) -> list[tuple[str, LogLine]]:
    """Every host's lines in one list, by time (each host's order kept)."""
    items = [
        (host, index, line)
        for host, reply in sorted(result.replies.items())
        for index, line in enumerate(reply.lines)
    ]
    earliest = datetime.min.replace(tzinfo=UTC)
    items.sort(key=lambda item: item[2].time or earliest)
    return [(host, line) for host, _, line in items]


def logs(
    ctx: typer.Context,
    target: TargetArg,
    tail: Annotated[
        int,
        typer.Option("--tail", "-n", min=0, max=MAX_LOG_LINES, help="Lines to show per host."),
    ] = 100,
    since: SinceOpt = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Stream new lines from every host at once until Ctrl-C (at most an hour).",
        ),
    ] = False,
    timestamps: Annotated[
        bool, typer.Option("--timestamps", help="Show each line's time.")
    ] = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="One JSON document; with --follow, JSON lines (one per log line)."
        ),
    ] = False,
) -> None:
    """Logs of a container, or of a service's current container, on every targeted host.

    Every line is prefixed by its host. With --follow, lines stream from all hosts
    at once; Ctrl-C stops every stream on the hosts and exits (a second Ctrl-C
    does not wait for them).
    """
    check_target(target)
    seconds = since_seconds(since)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    printer = LinePrinter(timestamps=timestamps, json_lines=json_ and follow)

    if follow:
        fleet = make_fleet(ctx, server, timeout)

        async def stream() -> FleetResult[LogsResult]:
            async with fleet, interruptible() as stop:
                return await fleet.follow_logs(
                    target,
                    printer.print,
                    stop,
                    tail=tail,
                    since=seconds,
                    selector=selection,
                    limit=sample,
                )

        result = run(stream())
        if json_:
            sys.stdout.write(json.dumps({"type": "result", **result.to_json()}) + "\n")
        render_footer(result)
        finish(result)

    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.logs(
            target, tail=tail, since=seconds, selector=selection, limit=sample
        ),
    )

    def render(result: FleetResult[LogsResult]) -> None:
        for host_id, line in merged_lines(result):
            printer.print(host_id, [line])

    show_result(result, render, json_=json_)
