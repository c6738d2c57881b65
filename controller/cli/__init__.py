"""The ``shoal`` command: parse, call the Fleet library, render, exit with a code."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from controller import __version__
from controller.cli import agents as agents_cmd
from controller.cli import everyday
from controller.cli import keys as keys_cmd
from controller.cli import security as security_cmd
from controller.cli.common import (
    GlobalOptions,
    JsonOpt,
    ServerOpt,
    err,
    make_fleet,
    print_json,
    run,
)
from controller.cli.deploy import deploy, pull, rollback, services
from controller.cli.disk import df, prune
from controller.cli.ps import ps
from controller.cli.up import up
from controller.result import ExitCode
from protocol import protocol_schema

app = typer.Typer(
    name="shoal",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shoal {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    server: ServerOpt = None,
    creds: Annotated[
        Path | None, typer.Option("--creds", envvar="NATS_CREDS", help="NATS credentials file.")
    ] = None,
    nkey: Annotated[
        Path | None, typer.Option("--nkey", envvar="NATS_NKEY", help="NATS NKey seed file.")
    ] = None,
    user: Annotated[str | None, typer.Option("--user", envvar="NATS_USER")] = None,
    password: Annotated[str | None, typer.Option("--password", envvar="NATS_PASSWORD")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="NATS_TOKEN")] = None,
    tlsca: Annotated[
        Path | None, typer.Option("--tlsca", envvar="NATS_CA", help="CA to verify the server.")
    ] = None,
    tlscert: Annotated[
        Path | None, typer.Option("--tlscert", envvar="NATS_CERT", help="Client certificate.")
    ] = None,
    tlskey: Annotated[
        Path | None, typer.Option("--tlskey", envvar="NATS_KEY", help="Client key.")
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", envvar="SHOAL_PREFIX", help="Subject prefix.")
    ] = "shoal",
    offline_after: Annotated[
        float | None,
        typer.Option(
            "--offline-after",
            envvar="SHOAL_OFFLINE_AFTER",
            min=0.1,
            help="Seconds without heartbeat before a host counts as offline "
            "\\[default: 3 heartbeat intervals].",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key",
            envvar="SHOAL_KEY",
            help="Signing key file (an nkeys user seed). \\[default: the default key of "
            "'shoal keys']",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Run Docker across a fleet of hosts over NATS.

    Exit codes of fleet commands: 0 every targeted host answered ok; 1 a host
    answered with an error; 2 usage error; 3 no host matched; 4 a targeted host
    did not answer (wins over 1); 5 NATS could not be reached.
    """
    ctx.obj = GlobalOptions(
        server=server,
        creds=creds,
        nkey=nkey,
        user=user,
        password=password,
        token=token,
        tlsca=tlsca,
        tlscert=tlscert,
        tlskey=tlskey,
        prefix=prefix,
        offline_after=offline_after,
        key=key,
    )


app.command(rich_help_panel="Fleet")(ps)
app.add_typer(agents_cmd.app, name="agents", rich_help_panel="Fleet")
app.command(rich_help_panel="Fleet")(everyday.images)
app.command(rich_help_panel="Fleet")(everyday.stats)
app.command(rich_help_panel="Fleet")(everyday.events)
app.command(rich_help_panel="Fleet")(everyday.info)
app.command(rich_help_panel="Containers")(everyday.logs)
app.command(rich_help_panel="Containers")(everyday.inspect)
app.command(rich_help_panel="Containers")(everyday.start)
app.command(rich_help_panel="Containers")(everyday.stop)
app.command(rich_help_panel="Containers")(everyday.restart)
app.command(rich_help_panel="Containers")(everyday.rm)
app.command(rich_help_panel="Disk")(df)
app.command(rich_help_panel="Disk")(prune)
app.command(rich_help_panel="Deploy")(deploy)
app.command(rich_help_panel="Deploy")(rollback)
app.command(rich_help_panel="Deploy")(services)
app.command(rich_help_panel="Deploy")(pull)
app.command(rich_help_panel="Set-up")(up)
app.add_typer(keys_cmd.app, name="keys", rich_help_panel="Security")
app.command(rich_help_panel="Security")(security_cmd.enroll)
app.command(rich_help_panel="Security")(security_cmd.audit)


@app.command(rich_help_panel="Set-up")
def init(
    ctx: typer.Context,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, max=5, help="Stream replicas (clusters).")
    ] = 1,
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create the registry stream on an existing NATS deployment with JetStream."""
    fleet = make_fleet(ctx, server)

    async def work() -> bool:
        async with fleet:
            return await fleet.init_registry(replicas)

    created = run(work())
    if json_:
        print_json({"created": created})
    else:
        err.print("registry stream created" if created else "registry stream already exists")


@app.command(rich_help_panel="Set-up")
def schema() -> None:
    """Print the JSON Schema of the protocol (envelope, heartbeat, every verb)."""
    sys.stdout.write(json.dumps(protocol_schema(), indent=2) + "\n")


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(int(ExitCode.OK))
