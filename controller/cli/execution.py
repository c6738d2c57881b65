"""``shoal exec`` and ``shoal run``: a command on many hosts, every host's output and exit."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from shoal.protocol import ExecResult, validate_image_ref

from ..result import ExitCode, FleetResult
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    ServerOpt,
    build_limit,
    build_selector,
    err,
    make_fleet,
    print_json,
    render_footer,
    run,
    usage_error,
)
from .deploy import JsonlOpt

if TYPE_CHECKING:
    from ..fleet import Fleet

CommandArg = Annotated[
    list[str],
    typer.Argument(metavar="-- CMD [ARGS]...", help="The command and its arguments, after --."),
]
UserOpt = Annotated[
    str | None, typer.Option("--user", "-u", metavar="USER[:GROUP]", help="Run as this user.")
]
WorkdirOpt = Annotated[
    str | None, typer.Option("--workdir", "-w", metavar="DIR", help="Working directory.")
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", "-e", metavar="KEY=VALUE", help="An environment variable (repeatable)."),
]
KillAfterOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        "-t",
        metavar="SECONDS",
        min=0.1,
        max=3600,
        help="Kill the command after this long; the host reports it timed out.",
    ),
]
BatchOpt = Annotated[
    str,
    typer.Option("--batch", metavar="N|N%", help="How many hosts run it at once (0: all)."),
]


def exec_exit(result: FleetResult[ExecResult]) -> ExitCode:
    """0 when every host's command exited 0, 1 when any did not, 4 when a host was silent."""
    if not result.targeted:
        return ExitCode.NO_MATCH
    if result.missing:
        return ExitCode.MISSING
    if result.errors or any(r.exit_code != 0 for r in result.replies.values()):
        return ExitCode.HOST_ERROR
    return ExitCode.OK


def _env(values: list[str] | None) -> dict[str, str]:
    env = {}
    for item in values or []:
        key, eq, value = item.partition("=")
        if not key or not eq:
            usage_error(f"invalid --env {item!r}: use KEY=VALUE")
        env[key] = value
    return env


class _Printer:
    """``host | line`` per host, stdout to stdout and stderr to stderr, whole lines only."""

    def __init__(self, jsonl: bool) -> None:
        self.jsonl = jsonl
        self.partial: dict[tuple[str, str], str] = {}
        self.width = 0

    def __call__(self, host: str, stream: str, text: str) -> None:
        if self.jsonl:
            event = {"event": "output", "host": host, "stream": stream, "text": text}
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()
            return
        self.width = max(self.width, len(host))
        key = (host, stream)
        pending = self.partial.pop(key, "") + text
        *lines, rest = pending.split("\n")
        if rest:
            self.partial[key] = rest
        target = sys.stdout if stream == "stdout" else sys.stderr
        for line in lines:
            target.write(f"{host.ljust(self.width)} | {line}\n")
        target.flush()

    def flush(self) -> None:
        for (host, stream), rest in sorted(self.partial.items()):
            target = sys.stdout if stream == "stdout" else sys.stderr
            target.write(f"{host.ljust(self.width)} | {rest}\n")
        self.partial.clear()


def _finish(result: FleetResult[ExecResult], mode: str) -> NoReturn:
    code = exec_exit(result)
    if mode == "json":
        print_json(result.to_json())
    elif mode == "jsonl":
        for host, reply in sorted(result.replies.items()):
            line: dict[str, Any] = {"event": "finished", "host": host}
            line.update(exit_code=reply.exit_code, timed_out=reply.timed_out)
            line.update(truncated=reply.truncated, duration=reply.duration)
            sys.stdout.write(json.dumps(line) + "\n")
        summary = result.to_json()
        for key in ("replies",):
            summary.pop(key)
        sys.stdout.write(json.dumps({"event": "result", **summary}) + "\n")
    else:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("HOST", "EXIT", "DURATION", "NOTE"):
            table.add_column(column, no_wrap=True)
        for host, reply in sorted(result.replies.items()):
            note = "killed at the timeout" if reply.timed_out else ""
            if reply.truncated:
                note = (note + "; " if note else "") + "output truncated in the result"
            exit_text = "-" if reply.exit_code is None else str(reply.exit_code)
            table.add_row(host, exit_text, f"{reply.duration:.2f}s", note)
        err.print(table)
        render_footer(result)
    raise typer.Exit(int(code))


def _go(
    ctx: typer.Context,
    server: str | None,
    ask: Callable[[Fleet, Callable[[str, str, str], None] | None], Any],
    json_: bool,
    jsonl: bool,
) -> NoReturn:
    if json_ and jsonl:
        usage_error("--json and --jsonl cannot be used together")
    mode = "json" if json_ else "jsonl" if jsonl else "text"
    printer = _Printer(jsonl)
    fleet = make_fleet(ctx, server)

    async def work() -> FleetResult[ExecResult]:
        async with fleet:
            result: FleetResult[ExecResult] = await ask(fleet, None if json_ else printer)
            return result

    result = run(work())
    if mode == "text":
        printer.flush()
    _finish(result, mode)


def exec_command(
    ctx: typer.Context,
    target: Annotated[
        str, typer.Argument(metavar="CONTAINER|SERVICE", help="A container, or a service.")
    ],
    command: CommandArg,
    user: UserOpt = None,
    workdir: WorkdirOpt = None,
    env: EnvOpt = None,
    timeout: KillAfterOpt = 60.0,
    batch: BatchOpt = "0",
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Run a command in a container (or a service's current container) on every targeted host.

    Output streams as it comes, 'host | line', stdout to stdout and stderr to stderr.
    Exit 0 when every host's command exited 0, 1 when any did not (or failed), 4 when a
    host did not answer. --json: per host exit_code, stdout, stderr (the first 4 MiB of
    each), truncated, timed_out. Needs the operator role; the host's policy may forbid
    exec or allow only listed commands.
    """
    variables = _env(env)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    _go(
        ctx,
        server,
        lambda fleet, on_output: fleet.exec(
            target,
            command,
            user=user,
            workdir=workdir,
            env=variables,
            kill_after=timeout,
            batch=batch,
            on_output=on_output,
            selector=selection,
            limit=sample,
        ),
        json_,
        jsonl,
    )


def run_command(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="The image to run.")],
    command: CommandArg,
    user: UserOpt = None,
    workdir: WorkdirOpt = None,
    env: EnvOpt = None,
    network: Annotated[
        str, typer.Option("--network", metavar="NETWORK", help="The container's network.")
    ] = "none",
    timeout: KillAfterOpt = 60.0,
    batch: BatchOpt = "0",
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Run a command in a one-off container on every targeted host (docker run --rm).

    The container has network none unless --network says otherwise, passes the host's
    policy like a deploy, and is removed when the command ends. Output and exit codes
    as for exec: for maintenance jobs (a backup, a migration).
    """
    try:
        validate_image_ref(image)
    except ValueError as exc:
        usage_error(str(exc))
    variables = _env(env)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    _go(
        ctx,
        server,
        lambda fleet, on_output: fleet.run(
            image,
            command,
            user=user,
            workdir=workdir,
            env=variables,
            network=network,
            kill_after=timeout,
            batch=batch,
            on_output=on_output,
            selector=selection,
            limit=sample,
        ),
        json_,
        jsonl,
    )


__all__ = ["exec_command", "exec_exit", "run_command"]
