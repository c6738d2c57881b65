"""The ``shoal`` command: parse, call the Fleet library, render, exit with a code."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import typer
import typer.core
import typer.main

from .. import __version__
from ..result import ExitCode
from .common import (
    GlobalOptions,
    JsonOpt,
    ServerOpt,
    err,
    make_fleet,
    print_json,
    run,
)


@dataclass(frozen=True)
class Lazy:
    """A command whose module is imported only when the command is run or listed.

    ``target`` is ``module:attribute``: a command function, or (``group``) a Typer
    app of subcommands.
    """

    target: str
    panel: str
    group: bool = False

    def load(self, name: str) -> typer.core.TyperCommand | typer.core.TyperGroup:
        module, _, attribute = self.target.partition(":")
        found = getattr(importlib.import_module(module), attribute)
        command: typer.core.TyperCommand | typer.core.TyperGroup
        if self.group:
            command = typer.main.get_group(found)
        else:
            single = typer.Typer(add_completion=False, rich_markup_mode="rich")
            single.command(name=name)(found)
            command = cast(typer.core.TyperCommand, typer.main.get_command(single))
        command.name = name
        command.rich_help_panel = self.panel
        return command


# Every command but the two defined below, in the order `shoal --help` lists them.
# A command's module (and what it imports: rich, the compose loader, the rollout
# engine) loads only when that command runs, so `shoal ps` does not pay for `deploy`.
LAZY_COMMANDS: dict[str, Lazy] = {
    "ps": Lazy("shoal.controller.cli.ps:ps", "Fleet"),
    "top": Lazy("shoal.controller.cli.top:top", "Fleet"),
    "agents": Lazy("shoal.controller.cli.agents:app", "Fleet", group=True),
    "images": Lazy("shoal.controller.cli.observe:images", "Fleet"),
    "stats": Lazy("shoal.controller.cli.observe:stats", "Fleet"),
    "events": Lazy("shoal.controller.cli.observe:events", "Fleet"),
    "info": Lazy("shoal.controller.cli.observe:info", "Fleet"),
    "logs": Lazy("shoal.controller.cli.logs:logs", "Containers"),
    "inspect": Lazy("shoal.controller.cli.containers:inspect", "Containers"),
    "start": Lazy("shoal.controller.cli.containers:start", "Containers"),
    "stop": Lazy("shoal.controller.cli.containers:stop", "Containers"),
    "restart": Lazy("shoal.controller.cli.containers:restart", "Containers"),
    "rm": Lazy("shoal.controller.cli.containers:rm", "Containers"),
    "exec": Lazy("shoal.controller.cli.execution:exec_command", "Containers"),
    "run": Lazy("shoal.controller.cli.execution:run_command", "Containers"),
    "df": Lazy("shoal.controller.cli.disk:df", "Disk"),
    "prune": Lazy("shoal.controller.cli.disk:prune", "Disk"),
    "deploy": Lazy("shoal.controller.cli.deploy:deploy", "Deploy"),
    "rollback": Lazy("shoal.controller.cli.deploy:rollback", "Deploy"),
    "services": Lazy("shoal.controller.cli.deploy:services", "Deploy"),
    "pull": Lazy("shoal.controller.cli.deploy:pull", "Deploy"),
    "secret": Lazy("shoal.controller.cli.secrets:app", "Deploy", group=True),
    "apply": Lazy("shoal.controller.cli.desired:apply", "Desired state"),
    "desired": Lazy("shoal.controller.cli.desired:desired", "Desired state"),
    "status": Lazy("shoal.controller.cli.desired:status", "Desired state"),
    "serve": Lazy("shoal.controller.cli.desired:serve", "Desired state"),
    "up": Lazy("shoal.controller.cli.up:up", "Set-up"),
    "keys": Lazy("shoal.controller.cli.keys:app", "Security", group=True),
    "enroll": Lazy("shoal.controller.cli.security:enroll", "Security"),
    "audit": Lazy("shoal.controller.cli.security:audit", "Security"),
}


class Commands(MutableMapping[str, Any]):
    """The group's commands: every name known at once, each built on first use."""

    def __init__(self, built: MutableMapping[str, Any]) -> None:
        self._built: dict[str, Any] = {}
        self._lazy = dict(LAZY_COMMANDS)
        self._order = [*LAZY_COMMANDS, *built]
        self._built.update(built)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._lazy:
                raise KeyError(name)
            self._built[name] = self._lazy[name].load(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._order:
            self._order.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._order.remove(name)
        self._built.pop(name, None)
        self._lazy.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order


class ShoalGroup(typer.core.TyperGroup):
    """The ``shoal`` group, with :class:`Commands` for its commands."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = Commands(self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    cls=ShoalGroup,
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
    from shoal.protocol import protocol_schema

    sys.stdout.write(json.dumps(protocol_schema(), indent=2) + "\n")


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(int(ExitCode.OK))
