"""``shoal secret``: secrets stored on hosts, for services that mount them ``external: true``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shoal.protocol import SecretArgs, SecretResult, SecretsResult
from shoal.protocol.sealing import SealingError
from shoal.protocol.service import FILE_NAME_PATTERN

from ..fleet import DEFAULT_TIMEOUT, Fleet
from ..result import FleetResult
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    ServerOpt,
    TimeoutOpt,
    ask_fleet,
    build_limit,
    build_selector,
    out,
    show_result,
    usage_error,
)

app = typer.Typer(
    help="Secrets kept on hosts (0600, under the agent's files directory) for services that"
    " mount them with external: true.",
    no_args_is_help=True,
)

MAX_VALUE = 256 * 1024

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The secret's name.")]


def check_name(name: str) -> None:
    try:
        SecretArgs(action="rm", name=name)
    except ValueError:
        usage_error(
            f"invalid secret name {name[:60]!r}: letters, digits, '_', '.' or '-'"
            f" ({FILE_NAME_PATTERN})"
        )


def read_value(path: Path) -> bytes:
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_VALUE + 1)
        else:
            with path.open("rb") as f:
                data = f.read(MAX_VALUE + 1)
    except OSError as exc:
        usage_error(f"cannot read {path}: {exc.strerror or exc}")
    if len(data) > MAX_VALUE:
        usage_error(f"{path}: a secret is at most {MAX_VALUE} bytes")
    return data


def render_changes(result: FleetResult[SecretResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "SECRET", "ACTION", "CHANGED"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        table.add_row(host, reply.name, reply.action, "yes" if reply.changed else "no")
    out.print(table)


@app.command("set")
def set_secret(
    ctx: typer.Context,
    name: NameArg,
    from_file: Annotated[
        Path,
        typer.Option(
            "--from-file",
            metavar="FILE",
            help="Read the value from FILE ('-': standard input). It travels sealed to each"
            " host's key and is never printed.",
        ),
    ],
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Store secret NAME on every targeted host (services mount it with external: true).

    Needs the operator role. Exit 0 only if every targeted host stored it.
    """
    check_name(name)
    value = read_value(from_file)
    selection = build_selector(host, selector)
    sample = build_limit(limit)

    async def ask(fleet: Fleet) -> FleetResult[SecretResult]:
        try:
            return await fleet.set_secret(name, value, selector=selection, limit=sample)
        except SealingError as exc:
            usage_error(exc.message)

    result = ask_fleet(ctx, server, timeout, ask)
    show_result(result, render_changes, json_=json_)


@app.command("rm")
def remove_secret(
    ctx: typer.Context,
    name: NameArg,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Delete secret NAME from every targeted host. Needs the operator role."""
    check_name(name)
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.remove_secret(name, selector=selection, limit=sample),
    )
    show_result(result, render_changes, json_=json_)


def render_names(result: FleetResult[SecretsResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "SECRETS"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        table.add_row(host, ", ".join(reply.secrets) or "-")
    out.print(table)


@app.command("ls")
def list_secrets(
    ctx: typer.Context,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """The names of the secrets stored on every targeted host (never their values)."""
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx, server, timeout, lambda fleet: fleet.secrets(selector=selection, limit=sample)
    )
    show_result(result, render_names, json_=json_)
