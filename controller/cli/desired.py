"""Desired state: ``shoal apply``, ``shoal desired``, ``shoal status`` and ``shoal serve``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.table import Table
from rich.text import Text

from shoal.protocol import RolloutConfig, ServicesArgs

from ..errors import FleetError
from ..result import ExitCode
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    ServerOpt,
    build_selector,
    err,
    make_fleet,
    out,
    print_json,
    run,
    usage_error,
)
from .deploy import FileOpt, load_project

if TYPE_CHECKING:
    from ..desired import Convergence, Declaration
    from ..fleet import Fleet

_STATE_STYLE = {
    "converged": "green",
    "pending": "yellow",
    "deploying": "cyan",
    "failed": "red",
    "drifted": "magenta",
    "removing": "yellow",
}


def _when(value: object) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


# --- apply ---------------------------------------------------------------------------


def apply(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SERVICE]...",
            help="Services of the compose file to declare. \\[default: all of them]",
            show_default=False,
        ),
    ] = None,
    file: FileOpt = None,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    delete: Annotated[
        list[str] | None,
        typer.Option(
            "--delete",
            metavar="SERVICE",
            help="Withdraw the declaration of SERVICE (repeatable): hosts remove it.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would change; store nothing.")
    ] = False,
    project_name: Annotated[
        str | None,
        typer.Option(
            "--project-name", "-p", metavar="NAME", help="Project name.", show_default=False
        ),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option("--profile", metavar="PROFILE", help="Enable services of this profile."),
    ] = None,
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Declare the services of a compose file: the hosts they belong on converge by themselves.

    Each service is stored with the hosts it belongs on (-H, -l; default every host),
    its rollout policy (deploy.update_config) and a generation that grows with every
    change. 'shoal serve' deploys it to every selected host that is online, and to every
    host that comes online or joins later; 'shoal status' shows where each host stands.
    """
    fleet = make_fleet(ctx, server)
    if delete:
        if services or file is not None:
            usage_error("--delete takes service names only; give no compose file or services")
        names = list(dict.fromkeys(delete))
        for name in names:
            try:
                ServicesArgs(service=name)
            except ValueError:
                usage_error(f"invalid service name {name!r}")
        run(_withdraw(fleet, names, dry_run, json_))
        return
    declarations = _declarations(file, services or [], host, selector, project_name, profile)
    run(_apply(fleet, declarations, dry_run, json_))


def _declarations(
    file: Path | None,
    names: list[str],
    host: list[str] | None,
    selector: list[str] | None,
    project_name: str | None,
    profile: list[str] | None,
) -> list[Declaration]:
    from ..desired import Declaration

    project = load_project(file, names, project_name=project_name, profiles=profile or ())
    target = build_selector(host, selector)
    out_list = []
    for spec in project.services:
        inline = [m.key for m in spec.secrets if not m.external]
        if inline:
            usage_error(
                f"service {spec.name} mounts {', '.join(inline)} with a value from the file:"
                " declarations keep no secret values; store them on the hosts with"
                " 'shoal secret set NAME --from-file FILE' and mount them external: true"
                " (or use 'shoal deploy')"
            )
        if spec.restart is None:
            # A host that reboots without its network starts the service as it was.
            spec = spec.model_copy(update={"restart": "unless-stopped"})
        out_list.append(
            Declaration(
                service=spec,
                selector=target,
                update=project.update_config.get(spec.name) or RolloutConfig(),
                rollback=project.rollback_config.get(spec.name),
                wait_for="completed" if spec.name in project.tasks else "running",
            )
        )
    return out_list


async def _apply(fleet: Fleet, declarations: list[Declaration], dry_run: bool, json_: bool) -> None:
    async with fleet:
        if dry_run:
            current = await fleet.desired()
            rows = []
            for d in declarations:
                old = current.get(d.name)
                changed = old is None or old.deleted or not old.same_intent(d)
                generation = (old.generation + 1 if changed else old.generation) if old else 1
                rows.append((d, generation, changed))
        else:
            applied_by = fleet.sender
            stamped = [d.model_copy(update={"applied_by": applied_by}) for d in declarations]
            rows = [(d, d.generation, changed) for d, changed in await fleet.apply(stamped)]
    if json_:
        print_json(
            {
                "dry_run": dry_run,
                "declarations": [
                    {"service": d.name, "generation": g, "changed": c, "spec_hash": d.spec_hash}
                    for d, g, c in rows
                ],
            }
        )
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "GENERATION", "CHANGE", "HOSTS"):
        table.add_column(column, no_wrap=True)
    for d, generation, changed in rows:
        what = ("would change" if dry_run else "changed") if changed else "unchanged"
        table.add_row(d.name, str(generation), what, _selector_text(d))
    out.print(table)


async def _withdraw(fleet: Fleet, names: list[str], dry_run: bool, json_: bool) -> None:
    async with fleet:
        results: list[tuple[str, bool]] = []
        for name in names:
            if dry_run:
                results.append((name, name in await fleet.desired()))
            else:
                results.append((name, await fleet.withdraw(name) is not None))
    if json_:
        print_json(
            {"dry_run": dry_run, "deleted": [{"service": n, "declared": k} for n, k in results]}
        )
    else:
        for name, known in results:
            if known:
                err.say(
                    f"{name}: {'would be ' if dry_run else ''}declared deleted; hosts remove it"
                )
            else:
                err.say((f"{name}: not declared", "yellow"))
    if not all(known for _, known in results):
        raise typer.Exit(int(ExitCode.NO_MATCH))


def _selector_text(d: Declaration) -> str:
    parts = [*(f"-H {h}" for h in d.selector.hosts), *(f"-l {s}" for s in d.selector.labels)]
    return " ".join(parts) or "every host"


# --- desired -------------------------------------------------------------------------


def desired(ctx: typer.Context, server: ServerOpt = None, json_: JsonOpt = False) -> None:
    """List the declarations: service, generation, hosts, image and when applied."""
    fleet = make_fleet(ctx, server)

    async def work() -> dict[str, Declaration]:
        async with fleet:
            return await fleet.desired()

    declarations = run(work())
    if json_:
        print_json(
            {
                "declarations": [
                    d.model_dump(mode="json") | {"spec_hash": d.spec_hash}
                    for d in sorted(declarations.values(), key=lambda d: d.name)
                ]
            }
        )
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "GENERATION", "HOSTS", "IMAGE", "APPLIED", "BY"):
        table.add_column(column, no_wrap=True)
    for name in sorted(declarations):
        d = declarations[name]
        table.add_row(
            name + (" (deleted)" if d.deleted else ""),
            str(d.generation),
            _selector_text(d),
            d.service.image,
            _when(d.applied_at),
            d.applied_by or "-",
        )
    out.print(table)
    if not declarations:
        err.say("nothing declared yet: 'shoal apply -f compose.yaml'")


# --- status ---------------------------------------------------------------------------


def status_exit(items: list[Convergence]) -> ExitCode:
    """0 all converged, 1 some failed (or not converged), 4 some hosts offline."""
    states = Counter(str(c.state) for c in items)
    if states["failed"] or states["drifted"] or states["deploying"] or states["removing"]:
        return ExitCode.HOST_ERROR
    if states["pending"]:
        return ExitCode.MISSING
    return ExitCode.OK


def _settled(items: list[Convergence]) -> bool:
    return all(str(c.state) in ("converged", "failed", "pending") for c in items)


def status(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(metavar="[SERVICE]...", help="Declarations to show. \\[default: all]"),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Block until every selected host is converged or failed (or the timeout).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option("--timeout", metavar="SECONDS", min=0, help="How long --wait waits."),
    ] = 300.0,
    server: ServerOpt = None,
    json_: JsonOpt = False,
) -> NoReturn:
    """Where every host stands for each declaration.

    converged; pending (offline: when last seen); deploying; failed (why, since when, next
    try); drifted (what differs: the reconciler deploys it); removing (declared deleted).
    Exit 0 when all are converged, 1 when some failed or are not converged, 4 when some
    hosts are offline (with --wait: at the deadline).
    """
    fleet = make_fleet(ctx, server)
    names = list(services or [])

    async def work() -> list[Convergence]:
        async with fleet:
            declared = await fleet.desired()
            unknown = [n for n in names if n not in declared]
            if unknown:
                usage_error(f"not declared: {', '.join(unknown)}")
            deadline = time.monotonic() + timeout
            while True:
                items = await fleet.status(names)
                if not wait or _settled(items) or time.monotonic() >= deadline:
                    return items
                await asyncio.sleep(1.0)  # the polling period of --wait

    items = run(work())
    code = status_exit(items)
    if json_:
        from ..desired import status_json

        print_json({"hosts": status_json(items), "exit_code": int(code)})
        raise typer.Exit(int(code))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "HOST", "GEN", "STATE", "REVISION", "DETAIL"):
        table.add_column(column, no_wrap=True)
    for c in items:
        table.add_row(
            c.service,
            c.host,
            str(c.generation),
            Text(str(c.state), _STATE_STYLE.get(str(c.state), "")),
            str(c.revision) if c.revision is not None else "-",
            _detail(c),
        )
    out.print(table)
    counts = Counter(str(c.state) for c in items)
    err.say(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no host is selected")
    raise typer.Exit(int(code))


def _web_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        usage_error(f"invalid --web {text!r}: use ADDRESS:PORT, e.g. 127.0.0.1:4280")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _dashboard(
    fleet: Fleet, address: str, port: int, token: str | None, actions: bool
) -> None:
    try:
        from ..web.app import is_loopback, serve_dashboard
    except ModuleNotFoundError as exc:
        err.say(("dashboard:", "red"), f" {exc.name} is missing: pip install 'shoal[web]'")
        return
    started = asyncio.Event()

    async def announce() -> None:
        await started.wait()
        where = f"http://{address}:{port}/"
        guard = "token required" if token else "no token"
        mode = "actions allowed" if actions else "read-only"
        err.say(("dashboard", "green"), f" on {where} ({guard}, {mode})")
        if not is_loopback(address):
            err.say(("dashboard:", "yellow"), " reachable off this machine: keep the token secret")

    told = asyncio.create_task(announce())
    try:
        await serve_dashboard(fleet, address, port, token=token, actions=actions, started=started)
    except FleetError as exc:
        err.say(("dashboard:", "red"), f" {exc.message}")
    finally:
        told.cancel()


def _detail(c: Convergence) -> str:
    if str(c.state) == "pending":
        return f"offline, last seen {_when(c.last_seen)}"
    if str(c.state) == "failed":
        return f"{c.reason} (since {_when(c.since)}, next try {_when(c.next_try)})"
    if str(c.state) == "deploying":
        return f"since {_when(c.since)}"
    return c.reason


# --- serve ----------------------------------------------------------------------------


def serve(
    ctx: typer.Context,
    holder: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="This replica's name in the lease and the audit trail. \\[default: HOSTNAME:PID]",
            show_default=False,
        ),
    ] = None,
    web: Annotated[
        str | None,
        typer.Option(
            "--web",
            metavar="ADDRESS:PORT",
            help="Also serve the web dashboard here, e.g. 127.0.0.1:4280 (needs shoal[web]).",
            show_default=False,
        ),
    ] = None,
    web_token: Annotated[
        str | None,
        typer.Option(
            "--web-token",
            envvar="SHOAL_WEB_TOKEN",
            help="Token the dashboard asks for (required off 127.0.0.1).",
            show_default=False,
        ),
    ] = None,
    web_actions: Annotated[
        bool,
        typer.Option(
            "--web-actions",
            help="Let the page act (restart a container), signed with this server's key.",
        ),
    ] = False,
    server: ServerOpt = None,
) -> None:
    """Run the reconciler: keep every selected host converged to the declarations.

    Several replicas may run: one holds a lease and acts, the others take over within
    seconds when it stops. Stops on SIGINT or SIGTERM, after the rollouts in flight.
    With --web it also serves the dashboard: the fleet live in a browser, read-only
    unless --web-actions (then each action is a request signed with this server's key,
    which the agents refuse unless its role allows it).
    """
    from ..reconcile import Reconciler

    address, port = _web_address(web) if web is not None else ("", 0)
    if web is not None and address not in ("127.0.0.1", "::1", "localhost") and not web_token:
        usage_error(
            f"the dashboard on {address} needs a token (--web-token or SHOAL_WEB_TOKEN):"
            " off 127.0.0.1 anyone who reaches it would see the fleet"
        )

    name = holder or f"{socket.gethostname()}:{os.getpid()}"
    fleet = make_fleet(ctx, server)
    fleet.sender = f"shoal-serve:{name}"  # in its requests, the audit trail and its locks

    async def work() -> None:
        async with fleet:
            reconciler = Reconciler(fleet, holder=fleet.sender, on_event=lambda m: err.say(m))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, reconciler.stop)
            err.say(f"shoal serve: {fleet.sender} waiting for the reconciler lease")
            dashboard = None
            if web is not None:
                dashboard = asyncio.create_task(
                    _dashboard(fleet, address, port, web_token, web_actions)
                )
            try:
                await reconciler.run()
            finally:
                if dashboard is not None:
                    dashboard.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await dashboard
            err.say("shoal serve: stopped")

    use_fast_loop()
    run(work())


def use_fast_loop() -> None:
    """uvloop for a long-running process, when installed (the ``uvloop`` extra), unless
    ``SHOAL_EVENT_LOOP=asyncio``: it reads every heartbeat of the fleet."""
    if os.environ.get("SHOAL_EVENT_LOOP", "auto") == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
