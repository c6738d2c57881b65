"""``shoal deploy``, ``shoal rollback``, ``shoal services`` and ``shoal pull``.

Each command parses, calls the Fleet (``deploy``/``rollback`` iterate rollout
events), renders with Rich and exits with the fleet exit codes.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from pydantic import ValidationError
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.protocol import (
    DeployPhase,
    FailureAction,
    Order,
    Progress,
    PullResult,
    Reply,
    RolloutConfig,
    ServicesArgs,
    ServiceSpec,
    ServicesResult,
    validate_image_ref,
)
from shoal.protocol.envelope import summarize_validation_error

from ..fleet import DEFAULT_TIMEOUT, Fleet
from ..result import ExitCode, FleetResult
from ..rollout import (
    DEPLOY_TIMEOUT,
    DEPLOYED,
    ROLLED_BACK,
    HostFinished,
    HostProgress,
    InvalidParallelism,
    RollbackStarted,
    RolloutEvent,
    RolloutReport,
    RolloutRun,
    RolloutStarted,
    Starter,
    WaveFinished,
    WaveStarted,
    wave_size,
)
from ..rollout import run_rollouts as library_run_rollouts
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    ServerOpt,
    TimeoutOpt,
    ago,
    ask_fleet,
    build_limit,
    build_selector,
    err,
    human_size,
    make_fleet,
    out,
    parse_duration,
    print_json,
    run,
    show_result,
    usage_error,
)

if TYPE_CHECKING:
    from ..compose import ComposeProject

COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")

# --- options ----------------------------------------------------------------------------

FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        metavar="FILE",
        help="Compose file. \\[default: compose.yaml, compose.yml, docker-compose.yaml or "
        "docker-compose.yml in the current directory]",
        show_default=False,
    ),
]
ParallelOpt = Annotated[
    str | None,
    typer.Option(
        "--parallel",
        metavar="N|N%",
        help="Hosts per wave: N, or N% of the targeted hosts (0: all at once). "
        "\\[default: update_config, else 1]",
        show_default=False,
    ),
]
DelayOpt = Annotated[
    str | None,
    typer.Option(
        "--delay",
        metavar="DURATION",
        help="Pause between waves, e.g. 30s, 2m (a bare number is seconds).",
        show_default=False,
    ),
]
MonitorOpt = Annotated[
    str | None,
    typer.Option(
        "--monitor",
        metavar="DURATION",
        help="How long a new container must stay running (healthy) to count as a success.",
        show_default=False,
    ),
]
MaxFailureOpt = Annotated[
    float | None,
    typer.Option(
        "--max-failure-ratio",
        metavar="F",
        min=0.0,
        max=1.0,
        help="Share of failed hosts (0..1) tolerated before the failure action applies.",
        show_default=False,
    ),
]
FailureActionOpt = Annotated[
    FailureAction | None,
    typer.Option(
        "--failure-action",
        help="Beyond the tolerated failures: pause (stop), continue (stop, verdict failed) "
        "or rollback (undo on every host this rollout changed).",
        show_default=False,
        case_sensitive=False,
    ),
]
OrderOpt = Annotated[
    Order | None,
    typer.Option(
        "--order",
        help="Stop the old container before starting the new one, or start the new first.",
        show_default=False,
        case_sensitive=False,
    ),
]
CanaryOpt = Annotated[
    int,
    typer.Option(
        "--canary",
        metavar="N",
        min=0,
        help="Deploy to N hosts first, alone; any failure there stops the rollout.",
    ),
]
JsonlOpt = Annotated[
    bool, typer.Option("--jsonl", help="Print one JSON object per event, as it happens.")
]
RolloutTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        "-t",
        envvar="SHOAL_DEPLOY_TIMEOUT",
        min=0.1,
        help="Seconds a host may stay silent (each progress message restarts the wait; "
        "the monitor window is added).",
    ),
]


def parse_seconds(text: str, option: str) -> float:
    """``0``, ``45`` (seconds), ``30s``, ``2m``, ``1h``."""
    try:
        value = float(text)
    except ValueError:
        try:
            return parse_duration(text, allow_zero=True)
        except ValueError as exc:
            usage_error(f"{option}: {exc}")
    if value < 0:
        usage_error(f"{option}: a duration cannot be negative")
    return value


def rollout_overrides(
    parallel: str | None,
    delay: str | None,
    monitor: str | None,
    max_failure_ratio: float | None,
    failure_action: FailureAction | None,
    order: Order | None,
) -> dict[str, Any]:
    """The options given on the command line, as RolloutConfig fields."""
    overrides: dict[str, Any] = {}
    if parallel is not None:
        try:
            wave_size(parallel, 1)
        except InvalidParallelism as exc:
            usage_error(f"--parallel: {exc.message}")
        overrides["parallelism"] = parallel.strip()
    if delay is not None:
        overrides["delay"] = parse_seconds(delay, "--delay")
    if monitor is not None:
        overrides["monitor"] = parse_seconds(monitor, "--monitor")
    if max_failure_ratio is not None:
        overrides["max_failure_ratio"] = max_failure_ratio
    if failure_action is not None:
        overrides["failure_action"] = failure_action
    if order is not None:
        overrides["order"] = order
    return overrides


def with_overrides(base: RolloutConfig | None, overrides: dict[str, Any]) -> RolloutConfig:
    try:
        return RolloutConfig.model_validate({**(base or RolloutConfig()).model_dump(), **overrides})
    except ValidationError as exc:
        usage_error(summarize_validation_error(exc))


def load_project(
    file: Path | None,
    names: list[str],
    *,
    project_name: str | None = None,
    profiles: Sequence[str] = (),
) -> ComposeProject:
    """Read the compose file (bad file: message and exit 2)."""
    try:
        from ..compose import ComposeError, load_compose
    except ModuleNotFoundError as exc:
        if exc.name != "yaml":
            raise
        usage_error(
            "reading compose files needs PyYAML, which is not installed here (it has no "
            "wheel for 32-bit ARM): pip install 'shoal[yaml]'"
        )

    if file is None:
        file = next((Path(n) for n in COMPOSE_FILES if Path(n).is_file()), None)
        if file is None:
            usage_error(
                f"no compose file: give one with -f FILE (looked for {', '.join(COMPOSE_FILES)})"
            )
    try:
        project = load_compose(
            file, services=tuple(names), project=project_name, profiles=tuple(profiles)
        )
    except ComposeError as exc:
        usage_error(exc.message)
    except OSError as exc:
        usage_error(f"cannot read {file}: {exc.strerror or exc}")
    for warning in project.warnings:
        err.say(("warning:", "yellow"), f" {warning}")
    if not project.services:
        usage_error(f"{file}: no service to deploy")
    return project


# --- the per-host board -------------------------------------------------------------------

_OUTCOME_STYLE = {
    "created": "green",
    "updated": "green",
    "unchanged": "dim",
    "rolled_back": "yellow",
    "removed": "yellow",
    "failed": "red",
    "missing": "red",
    "skipped": "dim",
}


def progress_text(phase: str, current: float | None, total: float | None, message: str) -> str:
    if current is not None and total:
        if phase in (DeployPhase.PULLING, "pulling"):
            pct = min(100, int(100 * current / total))
            return f"{human_size(current)}/{human_size(total)} ({pct}%)"
        return f"{current:.0f}/{total:.0f}"
    if current is not None and phase == DeployPhase.PULLING:
        return human_size(current)
    return message if len(message) <= 48 else message[:47] + "…"


@dataclass
class _Row:
    wave: str = ""
    phase: str = "waiting"
    progress: str = ""
    status: str = ""
    style: str = "dim"
    rank: int = 2  # 0 working, 1 failed, 2 waiting, 3 done


class HostBoard:
    """One row per host (HOST, PHASE, PROGRESS, STATUS), live on a terminal."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: dict[str, _Row] = {}
        self.caption = ""
        self._live: Live | None = None

    def start(self) -> None:
        self._live = Live(
            get_renderable=self.render,
            console=err.console,
            refresh_per_second=8,
            transient=True,
        )
        self._live.start()

    def stop(self) -> None:
        live, self._live = self._live, None
        if live is not None:
            live.stop()

    def __enter__(self) -> HostBoard:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def row(self, host: str) -> _Row:
        return self.rows.setdefault(host, _Row())

    def working(self, host: str, phase: str, progress: str) -> None:
        row = self.row(host)
        row.phase, row.progress, row.status, row.style = phase, progress, "working", "cyan"
        row.rank = 0

    def done(self, host: str, status: str, style: str, failed: bool = False) -> None:
        row = self.row(host)
        row.phase, row.progress, row.status, row.style = "done", "", status, style
        row.rank = 1 if failed else 3

    def render(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="bold", title_justify="left")
        for column in ("HOST", "WAVE", "PHASE", "PROGRESS", "STATUS"):
            table.add_column(column, no_wrap=True)
        room = max(5, err.size.height - 5)
        ordered = sorted(self.rows.items(), key=lambda item: (item[1].rank, item[0]))
        for host, row in ordered[:room]:
            table.add_row(host, row.wave, row.phase, row.progress, Text(row.status, row.style))
        counts = Counter(row.rank for row in self.rows.values())
        caption = (
            f"{self.title}: {counts[3]} done, {counts[1]} failed, {counts[0]} working, "
            f"{counts[2]} waiting"
        )
        if len(ordered) > room:
            caption += f" ({len(ordered) - room} more hosts not shown)"
        if self.caption:
            caption += f" · {self.caption}"
        return Group(table, Text(caption, style="dim"))


# --- rollout output ---------------------------------------------------------------------

Mode = Literal["live", "lines", "jsonl", "quiet"]


def output_mode(json_: bool, jsonl: bool) -> Mode:
    if json_ and jsonl:
        usage_error("--json and --jsonl cannot be used together")
    if jsonl:
        return "jsonl"
    if json_:
        return "quiet"
    return "live" if sys.stderr.isatty() else "lines"


def finished_status(event: HostFinished, dry_run: bool) -> str:
    if event.outcome == "failed" and event.error is not None:
        return f"failed: {event.error.code}"
    if event.outcome in ("created", "updated", "rolled_back") and event.revision is not None:
        would = "would be " if dry_run else ""
        return f"{would}{event.outcome} (revision {event.revision})"
    return event.outcome


class RolloutOutput:
    """Shows one rollout's events: a live board, plain lines, or JSON lines."""

    def __init__(self, mode: Mode, service: str) -> None:
        self.mode = mode
        self.service = service
        self.board = HostBoard(service)
        self.dry_run = False
        self.waves = 0
        self.phases: dict[str, str] = {}

    def __enter__(self) -> RolloutOutput:
        if self.mode == "live":
            self.board.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.board.stop()

    def line(self, text: str) -> None:
        if self.mode == "lines":
            err.print(Text(text))

    def __call__(self, event: RolloutEvent) -> None:
        self.show(event)

    def show(self, event: RolloutEvent) -> None:
        if self.mode == "jsonl":
            sys.stdout.write(
                json.dumps({"service": self.service, **event.to_json()}, default=str) + "\n"
            )
            sys.stdout.flush()
            return
        if isinstance(event, RolloutStarted):
            self.dry_run, self.waves = event.dry_run, len(event.waves)
            for index, wave in enumerate(event.waves):
                for host in wave:
                    self.board.row(host).wave = str(index + 1)
            if not event.waves:
                return  # no host matched: said once at the end
            hosts = sum(len(w) for w in event.waves)
            plan = " ".join("[" + " ".join(w) + "]" for w in event.waves)
            what = "dry run on" if event.dry_run else "rolling out to"
            self.line(f"{self.service}: {what} {hosts} hosts in {self.waves} waves: {plan}")
            if event.dry_run:
                self.board.caption = "dry run: nothing changes"
        elif isinstance(event, WaveStarted):
            self.board.caption = f"wave {event.index + 1}/{self.waves}"
            self.line(f"wave {event.index + 1}/{self.waves}: {' '.join(event.hosts)}")
        elif isinstance(event, HostProgress):
            text = progress_text(event.phase, event.current, event.total, event.message)
            self.board.working(event.host, event.phase, text)
            if self.phases.get(event.host) != event.phase:
                self.phases[event.host] = event.phase
                shown = text if text.startswith(event.phase) else f"{event.phase} {text}"
                self.line(f"{event.host}: {shown.strip()}")
        elif isinstance(event, HostFinished):
            status = finished_status(event, self.dry_run)
            failed = event.outcome in ("failed", "missing")
            self.board.done(event.host, status, _OUTCOME_STYLE.get(event.outcome, ""), failed)
            message = f": {event.error.message}" if failed and event.error is not None else ""
            self.line(f"{event.host}: {status}{message}")
        elif isinstance(event, WaveFinished):
            self.line(
                f"wave {event.index + 1}/{self.waves} done: {len(event.failed_hosts)} failed "
                f"(failure ratio so far {event.failure_ratio:.2f})"
            )
        elif isinstance(event, RollbackStarted):
            self.board.caption = "rolling back"
            for host in event.hosts:
                self.board.working(host, DeployPhase.ROLLING_BACK, "")
            self.line(f"rolling back: {' '.join(event.hosts) or 'nothing to undo'}")


def render_rollout(report: RolloutReport) -> None:
    """The summary table of one rollout, on stdout."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "WAVE", "OUTCOME", "REVISION", "DETAIL"):
        table.add_column(column, no_wrap=column != "DETAIL")
    waves = {h: str(i + 1) for i, wave in enumerate(report.waves) for h in wave}
    for host, outcome in sorted(report.outcomes.items()):
        result = report.results.get(host)
        error = report.failures.get(host)
        revision = ""
        detail = ""
        if result is not None:
            revision = str(result.revision)
            moved = outcome in ("updated", "rolled_back")
            if moved and result.previous_revision not in (None, result.revision):
                revision = f"{result.previous_revision} → {result.revision}"
            detail = "; ".join(result.diff) if report.dry_run else result.image
        if outcome in ("failed", "missing") and error is not None:
            detail = f"{error.code}: {error.message}"
            restored = error.detail.get("restored_revision")
            if isinstance(restored, int):
                revision = f"{restored} (restored)"
        elif outcome == "skipped":
            detail = "not reached"
        elif outcome == "removed":
            revision, detail = "", "removed again (this rollout had created it)"
        shown = f"would be {outcome}" if report.dry_run and outcome in DEPLOYED else outcome
        table.add_row(
            host,
            waves.get(host, ""),
            Text(shown, _OUTCOME_STYLE.get(outcome, "")),
            revision,
            detail,
        )
    out.print(table)
    for host, error in sorted(report.failures.items()):
        logs = error.detail.get("logs")
        if report.outcomes.get(host) == "failed" and isinstance(logs, list) and logs:
            err.say((host, "red"), " last log lines:")
            for text in logs[-10:]:
                err.print(Text(f"  {text}", style="dim"))


_VERDICT_STYLE = {
    "completed": "green",
    "paused": "yellow",
    "rolled_back": "yellow",
    "failed": "red",
}


def verdict_line(report: RolloutReport) -> Text:
    counts = Counter(report.outcomes.values())
    parts = [f"{n} {o.replace('_', ' ')}" for o, n in sorted(counts.items())]
    total = len(report.outcomes)
    if report.dry_run:
        return Text(f"{report.service}: dry run on {total} hosts: " + ", ".join(parts))
    verdict = report.verdict or "failed"
    text = Text(f"{report.service}: ")
    text.append(verdict.replace("_", " "), style=f"bold {_VERDICT_STYLE.get(verdict, '')}")
    text.append(f" ({total} hosts: {', '.join(parts) or 'none'})")
    if verdict == "paused":
        text.append("; run the same command again to resume")
    return text


async def run_rollouts(
    fleet: Fleet,
    rollouts: list[tuple[str, Starter]],
    mode: Mode,
    success: frozenset[str],
    keep_going: bool,
) -> RolloutRun:
    """The library's :func:`controller.rollout.run_rollouts`, shown as the mode says."""

    def on_report(report: RolloutReport) -> None:
        if mode not in ("jsonl", "quiet"):
            render_rollout(report)
            err.print(verdict_line(report))

    def watch(service: str) -> RolloutOutput:
        return RolloutOutput(mode, service)

    async with fleet:
        return await library_run_rollouts(
            rollouts, success=success, keep_going=keep_going, watch=watch, on_report=on_report
        )


def report_rollouts(outcome: RolloutRun, mode: Mode) -> None:
    """Print the --json document, or the closing lines, and exit with the code."""
    code = outcome.exit_code
    no_match = code == ExitCode.NO_MATCH
    if mode == "quiet":
        empty = RolloutReport().to_json()
        last = outcome.reports[-1].to_json() if outcome.reports else empty
        last.pop("exit_code")
        document: dict[str, Any] = {
            **last,
            "rollouts": [{"service": r.service, **r.to_json()} for r in outcome.reports],
            "not_run": outcome.not_run,
            "error": outcome.error,
            "exit_code": int(code),
        }
        print_json(document)
    else:
        if outcome.error is not None:
            err.print(Text.assemble(("error: ", "red"), outcome.error))
        if no_match:
            err.say(("no host matched the target", "yellow"))
        elif outcome.not_run and mode != "jsonl":
            err.say(("not run:", "yellow"), f" {', '.join(outcome.not_run)}")
    raise typer.Exit(int(code))


# --- commands -----------------------------------------------------------------------------


def deploy(
    ctx: typer.Context,
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SERVICE]...",
            help="Services of the compose file to deploy. \\[default: all of them]",
            show_default=False,
        ),
    ] = None,
    file: FileOpt = None,
    parallel: ParallelOpt = None,
    delay: DelayOpt = None,
    monitor: MonitorOpt = None,
    max_failure_ratio: MaxFailureOpt = None,
    failure_action: FailureActionOpt = None,
    order: OrderOpt = None,
    canary: CanaryOpt = 0,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Every host says what it would do; nothing changes."),
    ] = False,
    project_name: Annotated[
        str | None,
        typer.Option(
            "--project-name",
            "-p",
            metavar="NAME",
            help="Project name (names the networks). \\[default: the file's name:, else its"
            " folder's name]",
            show_default=False,
        ),
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile",
            metavar="PROFILE",
            help="Enable services of this profile (repeatable). \\[default: COMPOSE_PROFILES]",
            show_default=False,
        ),
    ] = None,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: RolloutTimeoutOpt = DEPLOY_TIMEOUT,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Roll services of a compose file out to the fleet, in waves.

    Each service goes out in waves (an optional canary wave first) paced by the
    file's deploy.update_config, which the options override; several services go one
    after another in depends_on order, and a service that does not complete stops the
    ones after it. Exit 0 only if every targeted host ends on the new revision (or was
    unchanged). --json prints one document: targeted, replies, errors, missing and
    rollout {service, verdict, waves, hosts} for the last service, and rollouts, the
    same for every service.
    """
    mode = output_mode(json_, jsonl)
    overrides = rollout_overrides(
        parallel, delay, monitor, max_failure_ratio, failure_action, order
    )
    project = load_project(file, services or [], project_name=project_name, profiles=profile or ())
    target = build_selector(host, selector)
    sample = build_limit(limit)
    fleet = make_fleet(ctx, server, timeout)

    def starter(spec: ServiceSpec) -> Starter:
        config = with_overrides(project.update_config.get(spec.name), overrides)
        back = project.rollback_config.get(spec.name)
        rollback_config = with_overrides(back, {}) if back is not None else config
        return lambda: fleet.deploy(
            spec,
            selector=target,
            limit=sample,
            config=config,
            rollback_config=rollback_config,
            canary=canary,
            timeout=timeout,
            dry_run=dry_run,
            values=project.values,
            wait_for="completed" if spec.name in project.tasks else "running",
        )

    rollouts = [(spec.name, starter(spec)) for spec in project.services]
    report_rollouts(run(run_rollouts(fleet, rollouts, mode, DEPLOYED, dry_run)), mode)


def rollback(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(metavar="SERVICE", help="The service to roll back.")],
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            metavar="FILE",
            help="Take the defaults from this compose file's deploy.rollback_config.",
        ),
    ] = None,
    parallel: ParallelOpt = None,
    delay: DelayOpt = None,
    monitor: MonitorOpt = None,
    max_failure_ratio: MaxFailureOpt = None,
    failure_action: FailureActionOpt = None,
    order: OrderOpt = None,
    canary: CanaryOpt = 0,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: RolloutTimeoutOpt = DEPLOY_TIMEOUT,
    json_: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Put the targeted hosts back on the previous revision of SERVICE, in waves.

    Same waves and failure handling as deploy (a rollback failure action pauses).
    Exit 0 only if every targeted host rolled back.
    """
    mode = output_mode(json_, jsonl)
    try:
        ServicesArgs(service=service)
    except ValidationError:
        usage_error(f"invalid service name {service!r}")
    overrides = rollout_overrides(
        parallel, delay, monitor, max_failure_ratio, failure_action, order
    )
    base = None
    if file is not None:
        project = load_project(file, [service])
        base = project.rollback_config.get(service) or project.update_config.get(service)
    config = with_overrides(base, overrides)
    target = build_selector(host, selector)
    sample = build_limit(limit)
    fleet = make_fleet(ctx, server, timeout)

    def start() -> AsyncGenerator[RolloutEvent, None]:
        return fleet.rollback(
            service, selector=target, limit=sample, config=config, canary=canary, timeout=timeout
        )

    report_rollouts(run(run_rollouts(fleet, [(service, start)], mode, ROLLED_BACK, False)), mode)


def render_services(result: FleetResult[ServicesResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "SERVICE", "REVISION", "IMAGE", "STATE", "HEALTH", "UPDATED"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        for s in sorted(reply.services, key=lambda s: s.name):
            style = "green" if s.state == "running" else "red"
            health_style = {"healthy": "green", "unhealthy": "red"}.get(s.health, "")
            table.add_row(
                host,
                s.name,
                str(s.revision),
                s.image,
                Text(s.state, style),
                Text(s.health or "-", health_style),
                ago(s.updated_at),
            )
    out.print(table)


def services(
    ctx: typer.Context,
    service: Annotated[
        str | None, typer.Argument(metavar="[SERVICE]", help="Only this service.")
    ] = None,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Services deployed by Shoal on every targeted host: revision, image, state, health."""
    try:
        ServicesArgs(service=service)
    except ValidationError:
        usage_error(f"invalid service name {service!r}")
    target = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx, server, timeout, lambda fleet: fleet.services(service, selector=target, limit=sample)
    )
    show_result(result, render_services, json_=json_)


def render_pull(result: FleetResult[PullResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "IMAGE", "IMAGE ID", "ARCH", "DIGEST", "CHANGED"):
        table.add_column(column, no_wrap=True)
    for host, reply in sorted(result.replies.items()):
        table.add_row(
            host,
            reply.image,
            reply.image_id.removeprefix("sha256:")[:12],
            reply.architecture or "-",
            reply.digest.split("@")[-1][:19] or "-",
            Text("yes", "green") if reply.changed else Text("no", "dim"),
        )
    out.print(table)


def pull(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="Image reference to pull.")],
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEPLOY_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Pull an image on every targeted host (ahead of a deploy), with progress per host."""
    try:
        validate_image_ref(image)
    except ValueError as exc:
        usage_error(str(exc))
    target = build_selector(host, selector)
    sample = build_limit(limit)
    fleet = make_fleet(ctx, server, timeout)
    show = sys.stderr.isatty() and not json_

    async def work() -> FleetResult[PullResult]:
        async with fleet:
            if not show:
                return await fleet.pull(image, selector=target, limit=sample)
            board = HostBoard(f"pull {image}")

            def on_progress(progress: Progress) -> None:
                text = progress_text(
                    progress.phase, progress.current, progress.total, progress.message
                )
                board.working(progress.host, progress.phase, text)

            def on_reply(reply: Reply) -> None:
                if reply.ok:
                    board.done(reply.host, "pulled", "green")
                else:
                    code = reply.error.code if reply.error is not None else "error"
                    board.done(reply.host, f"failed: {code}", "red", failed=True)

            with board:
                return await fleet.pull(
                    image,
                    selector=target,
                    limit=sample,
                    on_progress=on_progress,
                    on_reply=on_reply,
                )

    show_result(run(work()), render_pull, json_=json_)
