"""``shoal-agent``: run the agent for this host."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from shoal.protocol.envelope import summarize_validation_error
from shoal.protocol.errors import ShoalError

from . import __version__
from .config import AgentSettings
from .errors import AgentRestart
from .health import check_health
from .runtime import Agent, AgentConfigError, AgentStartError, AgentStopped
from .venvs import RESTART_EXIT, Layout, find_layout

app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
log = logging.getLogger("shoal.agent")


class EventLoopUnavailable(ShoalError):
    """The event loop asked for is not installed."""


def install_event_loop_policy(choice: str = "auto") -> str:
    """Set the event loop the agent runs on and return its name.

    ``auto`` takes uvloop when it is installed (the ``uvloop`` extra) and asyncio's own
    loop otherwise; ``asyncio`` never loads uvloop (about 2 MiB less resident memory,
    for small boards); ``uvloop`` insists on it.
    """
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                "uvloop is not installed: install the agent with the 'uvloop' extra, "
                "or use --event-loop auto"
            ) from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


async def run_agent(agent: Agent, layout: Layout | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly.

    With ``layout`` (an agent in versioned venvs, agent/venvs.py), an agent on trial
    after an upgrade must have started (connected, subscribed, heartbeated) by the
    trial's deadline, and then commits; else it points ``current`` back and raises
    :class:`AgentRestart`.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    loop.add_signal_handler(signal.SIGHUP, agent.reload_trust)
    try:
        trial = layout.at_start() if layout is not None else None
        if layout is not None:
            agent.heartbeat.upgrade_failed = layout.last_failure()
        if trial is None:
            await agent.start()
        else:
            log.info("on trial as version %s until %s", trial.version, time.ctime(trial.deadline))
            assert layout is not None
            try:
                async with asyncio.timeout(max(0.0, trial.deadline - time.time())):
                    await agent.start()
            except TimeoutError:
                if agent.heartbeat.published:
                    # Seen by the fleet as the new version: it stays, and starts afresh.
                    layout.commit(trial)
                    raise AgentRestart("deadline passed just after the first heartbeat") from None
                if layout.fall_back(trial, "the new agent did not connect and heartbeat in time"):
                    raise AgentRestart(f"upgrade to {trial.version} timed out") from None
                raise AgentStartError("the agent did not start within the deadline") from None
            except AgentConfigError as exc:
                # Exit 2 is not restarted: go back now rather than stay down on trial.
                if layout.fall_back(trial, f"the new agent refused its configuration: {exc}"):
                    raise AgentRestart(f"upgrade to {trial.version} refused: {exc}") from exc
                raise
            layout.commit(trial)
            agent.heartbeat.upgrade_failed = None
        await agent.serve_forever()
    finally:
        await agent.stop()


def check_config(settings: AgentSettings) -> int:
    """``--check-config``: load the trust and policy files as the agent would; 0 or 1."""
    from .policy import PolicyError, load_policy
    from .trust import TrustError, TrustStore

    problems = []
    if settings.trust is None and not settings.insecure:
        typer.echo("shoal-agent: no trust file (--trust) and not --insecure", err=True)
        return 2
    if settings.trust is not None:
        try:
            TrustStore(settings.trust).load()
        except TrustError as exc:
            problems.append(str(exc))
    if settings.policy is not None:
        try:
            load_policy(settings.policy)
        except PolicyError as exc:
            problems.append(str(exc))
    for problem in problems:
        typer.echo(f"shoal-agent: {problem}", err=True)
    if not problems:
        typer.echo(f"shoal-agent {__version__}: configuration ok")
    return 1 if problems else 0


@app.command()
def main_command(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            "-s",
            envvar="NATS_URL",
            help="NATS server URL(s), comma-separated. \\[default: nats://127.0.0.1:4222]",
        ),
    ] = None,
    host_id: Annotated[
        str | None,
        typer.Option(
            "--host-id",
            envvar="SHOAL_HOST_ID",
            help="This host's id ([A-Za-z0-9_-]{1,64}). Default: the Docker engine's host name.",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            help="Label k=v (repeatable). Env SHOAL_LABELS=k=v,k2=v2.",
        ),
    ] = None,
    docker_host: Annotated[
        str | None,
        typer.Option(
            "--docker-host",
            envvar="DOCKER_HOST",
            help="Docker engine address. Default: the local socket.",
        ),
    ] = None,
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
        str | None,
        typer.Option("--prefix", envvar="SHOAL_PREFIX", help="Subject prefix. \\[default: shoal]"),
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            envvar="SHOAL_HEARTBEAT_INTERVAL",
            help="Seconds between heartbeats. \\[default: 5]",
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            envvar="SHOAL_CONCURRENCY",
            help="Requests served at once. \\[default: 8]",
        ),
    ] = None,
    trust: Annotated[
        Path | None,
        typer.Option(
            "--trust",
            envvar="SHOAL_TRUST",
            help="Trust file (TOML): the public keys allowed to send requests, with roles.",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="SHOAL_INSECURE",
            help="Accept UNSIGNED requests from anyone who can publish to NATS (no trust file).",
        ),
    ] = False,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            envvar="SHOAL_STATE_DIR",
            help="State directory (request journal). \\[default: /var/lib/shoal/agent as root, "
            "else ~/.local/state/shoal/agent]",
        ),
    ] = None,
    files_dir: Annotated[
        Path | None,
        typer.Option(
            "--files-dir",
            envvar="SHOAL_FILES_DIR",
            help="Where secret and config files are kept (0700). In a container, bind-mount it"
            " at the same path on the host. \\[default: STATE_DIR/HOST/files]",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            envvar="SHOAL_POLICY",
            help="Policy file (TOML): images, privileges and mounts this host allows.",
        ),
    ] = None,
    event_loop: Annotated[
        str | None,
        typer.Option(
            "--event-loop",
            envvar="SHOAL_EVENT_LOOP",
            help="auto (uvloop when installed), uvloop, or asyncio (its own loop, about 2 MiB "
            "less memory). \\[default: auto]",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="SHOAL_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (off by default).",
        ),
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="SHOAL_METRICS_ADDRESS",
            help="Address of the metrics server. \\[default: 127.0.0.1]",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="SHOAL_LOG_LEVEL", help="debug, info, warning")
    ] = "info",
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check-health",
            help="Exit 0 if the agent is connected and heartbeating (reads SHOAL_HEALTH_FILE, "
            "or the health file in the state directory of --host-id); for HEALTHCHECK.",
        ),
    ] = False,
    health_file: Annotated[
        Path | None, typer.Option("--health-file", envvar="SHOAL_HEALTH_FILE", hidden=True)
    ] = None,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-config",
            help="Check the settings, trust file and policy file, then exit: 0 valid, 1 a"
            " file is unreadable or invalid, 2 an invalid setting.",
        ),
    ] = False,
) -> None:
    """Run the Shoal agent: serve this host's Docker engine to the fleet over NATS."""
    if version:
        typer.echo(f"shoal-agent {__version__}")
        raise typer.Exit(0)
    if check:
        raise typer.Exit(run_check_health(health_file, state_dir, host_id))
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        typer.echo(
            f"shoal-agent: invalid --log-level {log_level!r}: use debug, info, warning or error",
            err=True,
        )
        raise typer.Exit(2)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    options: dict[str, Any] = {
        "servers": server,
        "host_id": host_id,
        "labels": label or None,
        "docker_host": docker_host,
        "creds": creds,
        "nkey": nkey,
        "user": user,
        "password": password,
        "token": token,
        "tlsca": tlsca,
        "tlscert": tlscert,
        "tlskey": tlskey,
        "prefix": prefix,
        "heartbeat_interval": heartbeat_interval,
        "concurrency": concurrency,
        "trust": trust,
        "insecure": insecure or None,
        "state_dir": state_dir,
        "files_dir": files_dir,
        "policy": policy,
        "health_file": health_file,
        "metrics_port": metrics_port,
        "metrics_address": metrics_address,
        "event_loop": event_loop,
    }
    try:
        settings = AgentSettings.from_options(options)
    except (ValidationError, ValueError) as exc:
        message = summarize_validation_error(exc) if isinstance(exc, ValidationError) else exc
        typer.echo(f"shoal-agent: invalid configuration: {message}", err=True)
        raise typer.Exit(2) from None
    if check_only:
        raise typer.Exit(check_config(settings))
    try:
        install_event_loop_policy(settings.event_loop)
    except EventLoopUnavailable as exc:
        typer.echo(f"shoal-agent: invalid configuration: --event-loop uvloop: {exc}", err=True)
        raise typer.Exit(2) from None
    agent = Agent(settings, version=__version__)
    try:
        asyncio.run(run_agent(agent, find_layout()))
    except AgentRestart as exc:
        log.warning("%s: exiting %d for the service manager to restart", exc, RESTART_EXIT)
        raise typer.Exit(RESTART_EXIT) from None
    except AgentStopped as exc:
        log.info("%s", exc)
    except AgentConfigError as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from None
    except AgentStartError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    if agent.restart_requested:
        raise typer.Exit(RESTART_EXIT)


def run_check_health(health_file: Path | None, state_dir: Path | None, host_id: str | None) -> int:
    path = health_file
    if path is None and host_id is not None:
        path = (
            AgentSettings.from_options({"state_dir": state_dir}).resolved_state_dir(host_id)
            / "health.json"
        )
    if path is None:
        typer.echo("shoal-agent: --check-health needs SHOAL_HEALTH_FILE or --host-id", err=True)
        return 2
    healthy, why = check_health(path)
    typer.echo(why, err=not healthy)
    return 0 if healthy else 1


def main() -> None:
    app()
