"""``shoal up``: NATS with JetStream plus an agent for the local engine, in the foreground."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shoal.protocol import NatsOptions, Role

from ..embedded import EmbeddedNats, state_dir
from ..errors import FleetError
from ..fleet import Fleet
from ..keys import KeyStore, resolve_signer
from ..reconcile import Reconciler
from .common import err, error, global_options, run, usage_error

if TYPE_CHECKING:  # the agent's modules load only when 'shoal up' runs
    from shoal.agent.config import AgentSettings


async def run_up(
    store: Path,
    address: str,
    port: int,
    settings: AgentSettings | None,
    prefix: str,
    web_port: int | None = None,
) -> None:
    from shoal.agent import __version__ as agent_version
    from shoal.agent.runtime import Agent, AgentStartError
    from shoal.protocol.trust import TrustEntry, render_trust

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with EmbeddedNats(store, host=address, port=port) as server:
        async with Fleet(NatsOptions(servers=server.url), prefix=prefix) as fleet:
            await fleet.init_registry()
        err.say(("NATS", "green"), f" with JetStream on {server.url} (store {store})")
        agent: Agent | None = None
        if settings is not None:
            signer = KeyStore().ensure_default()
            trust = store / "trust.toml"
            trust.write_text(
                render_trust([TrustEntry(name=signer.name, key=signer.public_key, role=Role.ADMIN)])
            )
            settings = settings.model_copy(
                update={"trust": trust, "state_dir": settings.state_dir or store / "agent"}
            )
            err.say(("key", "green"), f" {signer.name} ({signer.public_key}) trusted as admin")
            agent = Agent(
                settings.model_copy(update={"servers": (server.url,)}), version=agent_version
            )
            try:
                await agent.start()
            except AgentStartError as exc:
                error(str(exc))
                raise typer.Exit(1) from None
            reachable = agent.facts().docker.reachable
            err.say(
                ("agent", "green"),
                f" {agent.host_id} for the local Docker engine (",
                "reachable" if reachable else ("unreachable", "red"),
                ")",
            )
        async with Fleet(
            NatsOptions(servers=server.url),
            prefix=prefix,
            sender="shoal-serve:up",
            signer=resolve_signer(None),
        ) as serve_fleet:
            reconciler = Reconciler(serve_fleet, holder="shoal-serve:up")
            serving = asyncio.create_task(reconciler.run(), name="reconciler")
            err.say(("reconciler", "green"), " converging declared services ('shoal apply')")
            web = None
            if web_port is not None:
                web = asyncio.create_task(_web(serve_fleet, web_port), name="dashboard")
            err.say("Ready: run 'shoal agents' or 'shoal ps' in another terminal. Ctrl-C stops.")
            try:
                await stop.wait()
            finally:
                err.print("stopping…")
                reconciler.stop()
                if web is not None:
                    web.cancel()
                await asyncio.gather(serving, *([web] if web else []), return_exceptions=True)
                if agent is not None:
                    await agent.stop()


async def _web(fleet: Fleet, port: int) -> None:
    """The dashboard on 127.0.0.1 only (read-only), if the web extra is installed."""
    try:
        from ..web.app import serve_dashboard
    except ModuleNotFoundError:
        err.say("dashboard: not installed (pip install 'shoal[web]')")
        return
    started = asyncio.Event()
    task = asyncio.create_task(serve_dashboard(fleet, "127.0.0.1", port, started=started))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if started.is_set():
        err.say(("dashboard", "green"), f" on http://127.0.0.1:{port}/ (read-only)")
    waiter.cancel()
    try:
        await task
    except FleetError as exc:
        err.say(("dashboard:", "red"), f" {exc.message}")


def up(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="NATS client port.")] = 4222,
    address: Annotated[
        str,
        typer.Option(
            "--address",
            help="Address NATS listens on; 0.0.0.0 lets agents on other hosts join "
            "(then restrict who can reach it: whoever can publish to it commands the agents).",
        ),
    ] = "127.0.0.1",
    store: Annotated[
        Path | None,
        typer.Option("--store", help="JetStream store. \\[default: ~/.local/state/shoal/nats]"),
    ] = None,
    no_agent: Annotated[
        bool, typer.Option("--no-agent", help="Only run NATS, no local agent.")
    ] = False,
    host_id: Annotated[
        str | None,
        typer.Option("--host-id", envvar="SHOAL_HOST_ID", help="Host id of the local agent."),
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Label k=v for the local agent.")
    ] = None,
    docker_host: Annotated[
        str | None, typer.Option("--docker-host", envvar="DOCKER_HOST", help="Docker engine.")
    ] = None,
    web_port: Annotated[
        int,
        typer.Option("--web-port", help="Port of the web dashboard, on 127.0.0.1 only."),
    ] = 4280,
    no_web: Annotated[bool, typer.Option("--no-web", help="No web dashboard.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log the agent.")] = False,
) -> None:
    """Run Shoal on this machine: a NATS server with JetStream and an agent for local Docker.

    Stays in the foreground until Ctrl-C. Then 'shoal ps' works from another
    terminal with no flags.
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from shoal.agent.config import AgentSettings

    g = global_options(ctx)
    settings = None
    if not no_agent:
        try:
            settings = AgentSettings.from_options(
                {
                    "host_id": host_id,
                    "labels": label or None,
                    "docker_host": docker_host,
                    "prefix": g.prefix,
                }
            )
        except ValueError as exc:
            usage_error(str(exc))
    from shoal.agent.cli import (  # the agent's modules load only here
        EventLoopUnavailable,
        install_event_loop_policy,
    )

    try:
        install_event_loop_policy(settings.event_loop if settings is not None else "auto")
    except EventLoopUnavailable as exc:
        usage_error(f"SHOAL_EVENT_LOOP=uvloop: {exc}")
    run(
        run_up(
            store or state_dir() / "nats",
            address,
            port,
            settings,
            g.prefix,
            web_port=None if no_web else web_port,
        )
    )
