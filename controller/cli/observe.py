"""Fleet views: ``shoal images``, ``shoal stats``, ``shoal events`` and ``shoal info``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.protocol import (
    AgentEvent,
    ImagesResult,
    InfoResult,
    StatsResult,
)

from ..fleet import DEFAULT_TIMEOUT
from ..images import ImageComparison, compare_images
from ..result import ExitCode, FleetResult
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
    err,
    finish,
    human_size,
    make_fleet,
    out,
    print_json,
    render_footer,
    run,
    show_result,
    with_progress,
)
from .shared import (
    host_style,
    interruptible,
    is_terminal,
    short_id,
    since_seconds,
)

# --- images -------------------------------------------------------------------------------


def render_images(result: FleetResult[ImagesResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "ARCH"):
        table.add_column(column, no_wrap=True, justify="right" if column == "SIZE" else "left")
    for host, reply in sorted(result.replies.items()):
        for image in sorted(reply.images, key=lambda i: i.created, reverse=True):
            arch = f"{image.architecture}/{image.variant}" if image.variant else image.architecture
            for tag in image.repo_tags or ["<none>:<none>"]:
                repository, _, name = tag.rpartition(":")
                table.add_row(
                    host,
                    repository,
                    name,
                    short_id(image.id),
                    ago(image.created),
                    human_size(image.size),
                    arch or "-",
                )
    out.print(table)


def render_image_spread(rows: list[ImageComparison], hosts: int) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("IMAGE", "HOSTS", "STATUS", "MISSING ON", "DIFFERENT ON", "VARIANTS"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        if row.uniform:
            status = Text("same", "green")
        elif row.different:
            status = Text("differs", "red")
        else:
            status = Text("missing", "yellow")
        variants = (
            "; ".join(f"{short_id(v.id)}: {','.join(v.hosts)}" for v in row.variants)
            if len(row.variants) > 1
            else short_id(row.variants[0].id)
        )
        table.add_row(
            row.image,
            f"{len(row.present)}/{hosts}",
            status,
            ", ".join(row.missing) or "-",
            ", ".join(row.different) or "-",
            variants,
        )
    out.print(table)


def images(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Show intermediate images too.")
    ] = False,
    fleet_view: Annotated[
        bool,
        typer.Option(
            "--fleet",
            help="One row per tag: the hosts that lack it and those that hold a different "
            "image under it.",
        ),
    ] = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    retries: RetriesOpt = 0,
    json_: JsonOpt = False,
) -> None:
    """Images on every targeted host: repository, tag, id, created, size, architecture.

    With --fleet, one row per tag instead: on how many hosts it is, which hosts lack
    it, and which hold a different image under it (compared by registry digest when
    every host has one, else by image id). --json carries both views ("fleet").
    """
    target = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.images(all_, selector=target, limit=sample, retries=retries),
    )
    spread = compare_images(result)

    def render(result: FleetResult[ImagesResult]) -> None:
        if fleet_view:
            render_image_spread(spread, len(result.replies))
        else:
            render_images(result)

    show_result(
        result,
        render,
        json_=json_,
        document={**result.to_json(), "fleet": [row.model_dump() for row in spread]},
    )


# --- stats --------------------------------------------------------------------------------

_TOTAL_KEYS = (
    "containers",
    "cpus",
    "memory_total",
    "cpu_percent",
    "memory_usage",
    "net_rx",
    "net_tx",
    "block_read",
    "block_write",
    "pids",
)


def stats_totals(result: FleetResult[StatsResult]) -> dict[str, Any]:
    """The sums over every host that answered."""
    totals: dict[str, Any] = dict.fromkeys(_TOTAL_KEYS, 0)
    for reply in result.replies.values():
        for key in _TOTAL_KEYS:
            totals[key] += getattr(reply.host, key)
    totals["cpu_percent"] = round(totals["cpu_percent"], 2)
    totals["hosts"] = len(result.replies)
    return totals


def _pair(a: int, b: int) -> str:
    return f"{human_size(a)} / {human_size(b)}"


def stats_table(result: FleetResult[StatsResult]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = (
        "HOST",
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    )
    for column in columns:
        numeric = column in ("CPU %", "MEM %", "PIDS")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    for host, reply in sorted(result.replies.items()):
        for c in reply.containers:
            table.add_row(
                host,
                c.id[:12],
                c.name,
                f"{c.cpu_percent:.2f}%",
                _pair(c.memory_usage, c.memory_limit),
                f"{c.memory_percent:.2f}%",
                _pair(c.net_rx, c.net_tx),
                _pair(c.block_read, c.block_write),
                str(c.pids),
            )
    table.add_section()
    for host, reply in sorted(result.replies.items()):
        h = reply.host
        table.add_row(
            Text(host, "bold"),
            "",
            f"{h.containers} running, {h.cpus} CPUs",
            f"{h.cpu_percent:.2f}%",
            _pair(h.memory_usage, h.memory_total),
            f"{100 * h.memory_usage / h.memory_total:.2f}%" if h.memory_total else "-",
            _pair(h.net_rx, h.net_tx),
            _pair(h.block_read, h.block_write),
            str(h.pids),
        )
    if len(result.replies) > 1:
        t = stats_totals(result)
        table.add_row(
            Text("fleet", "bold"),
            "",
            f"{t['containers']} running, {t['cpus']} CPUs",
            f"{t['cpu_percent']:.2f}%",
            _pair(t["memory_usage"], t["memory_total"]),
            f"{100 * t['memory_usage'] / t['memory_total']:.2f}%" if t["memory_total"] else "-",
            _pair(t["net_rx"], t["net_tx"]),
            _pair(t["block_read"], t["block_write"]),
            str(t["pids"]),
        )
    return table


def _footer_text(result: FleetResult[StatsResult]) -> Text:
    text = Text(f"{len(result.replies)}/{len(result.targeted)} hosts answered ok", "dim")
    for host, failure in sorted(result.errors.items()):
        text.append(f"\nerror {host}: {failure.code}: {failure.message}", "red")
    for host in result.missing:
        text.append(f"\nmissing {host}", "yellow")
    return text


def stats(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=1.0, help="Seconds between refreshes with --watch."),
    ] = 5.0,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: Annotated[
        bool,
        typer.Option("--json", help="One JSON document; with --watch, one per line per refresh."),
    ] = False,
) -> None:
    """CPU, memory, network and block I/O per container, per host and for the fleet.

    One snapshot of every running container, as `docker stats --no-stream` shows it
    (CPU 100% is one CPU fully used; memory excludes the page cache), then the sums
    per host (against the host's CPUs and memory) and for the fleet. --watch takes
    a new snapshot every --interval seconds until Ctrl-C.
    """
    target = build_selector(host, selector)
    sample = build_limit(limit)
    fleet = make_fleet(ctx, server, timeout)

    async def snapshot() -> FleetResult[StatsResult]:
        return await fleet.stats(selector=target, limit=sample)

    if not watch:

        async def once() -> FleetResult[StatsResult]:
            async with fleet:
                return await with_progress("sampling the fleet…", snapshot)

        result = run(once())
        if json_:
            print_json({**result.to_json(), "totals": stats_totals(result)})
        else:
            out.print(stats_table(result))
            render_footer(result)
        finish(result)

    async def watching() -> FleetResult[StatsResult] | None:
        last: FleetResult[StatsResult] | None = None
        live = Live(Text("sampling the fleet…"), console=out.console, auto_refresh=False)
        use_live = is_terminal() and not json_
        async with fleet, interruptible() as stop:
            with live if use_live else contextlib.nullcontext():
                while not stop.is_set():
                    began = asyncio.get_running_loop().time()
                    sampling = asyncio.create_task(snapshot())
                    stopping = asyncio.create_task(stop.wait())
                    await asyncio.wait({sampling, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    stopping.cancel()
                    if not sampling.done():
                        sampling.cancel()
                        await asyncio.gather(sampling, return_exceptions=True)
                        break
                    last = sampling.result()
                    if json_:
                        document = {**last.to_json(), "totals": stats_totals(last)}
                        sys.stdout.write(json.dumps(document, default=str) + "\n")
                        sys.stdout.flush()
                    elif use_live:
                        live.update(Group(stats_table(last), _footer_text(last)), refresh=True)
                    else:
                        out.print(stats_table(last))
                        render_footer(last)
                        sys.stdout.write("\n")
                        sys.stdout.flush()
                    remaining = interval - (asyncio.get_running_loop().time() - began)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, remaining)):
                            await stop.wait()
        return last

    last = run(watching())
    if last is None:
        raise typer.Exit(int(ExitCode.OK))
    finish(last)


# --- events -------------------------------------------------------------------------------


def _event_key(event: AgentEvent) -> tuple[str, str, str, str]:
    container = event.container
    return (
        event.host_id,
        event.at.isoformat(),
        container.id if container else "",
        container.action if container else event.kind,
    )


class EventPrinter:
    def __init__(self, *, json_lines: bool) -> None:
        self.json_lines = json_lines
        self.color = is_terminal()

    def print(self, event: AgentEvent) -> None:
        if self.json_lines:
            sys.stdout.write(event.model_dump_json() + "\n")
            sys.stdout.flush()
            return
        when = event.at.astimezone().isoformat(timespec="milliseconds")
        detail = ""
        if event.container is not None:
            c = event.container
            extra = [f"image {c.image}"] if c.image else []
            if c.service:
                extra.append(f"service {c.service}")
            detail = f" ({', '.join(extra)})" if extra else ""
        line = Text(f"{when} ")
        line.append(event.host_id, host_style(event.host_id) if self.color else "")
        style = "red" if event.kind == "engine_lost" else ""
        line.append(f" {event.kind}", style if self.color else "")
        line.append(f" {event.message}{detail}")
        if self.color:
            out.print(line, soft_wrap=True)
        else:
            sys.stdout.write(line.plain + "\n")
        sys.stdout.flush()


def events(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="DURATION",
            help="First show the container events of the last DURATION that the engines "
            "still hold (Docker keeps its latest events only; agent events are not kept).",
        ),
    ] = None,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: Annotated[bool, typer.Option("--json", help="JSON lines, one per event.")] = False,
) -> None:
    """A live stream of container and agent events from the whole fleet, until Ctrl-C.

    Container events: create, start, restart, stop, kill, die, oom, destroy, pause,
    unpause, rename, update, health_status. Agent events: started, stopping,
    engine_lost, engine_regained. Events are not stored: only those published
    while the command runs are shown, plus, with --since, the container events the
    engines still hold.
    """
    seconds = since_seconds(since)
    target = build_selector(host, selector)
    fleet = make_fleet(ctx, server, timeout)
    printer = EventPrinter(json_lines=json_)

    async def work() -> int:
        code = int(ExitCode.OK)
        async with fleet, interruptible() as stop:
            stream = await fleet.watch_events(target)
            seen: set[tuple[str, str, str, str]] = set()
            if seconds is not None:
                history = await fleet.event_history(seconds, selector=target)
                past = sorted(
                    (e for reply in history.replies.values() for e in reply.events),
                    key=lambda e: e.at,
                )
                for event in past:
                    seen.add(_event_key(event))
                    printer.print(event)
                if not history.ok:
                    render_footer(history)
                    code = int(history.exit_code)

            async def consume() -> None:
                async for event in stream:
                    if _event_key(event) not in seen:
                        printer.print(event)

            err.print("watching the fleet's events (Ctrl-C to stop)…")
            reader = asyncio.create_task(consume())
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, stopping):
                    task.cancel()
                await asyncio.gather(reader, stopping, return_exceptions=True)
                await stream.aclose()
        return code

    raise typer.Exit(run(work()))


# --- info ---------------------------------------------------------------------------------


def render_info(result: FleetResult[InfoResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = (
        "HOST",
        "DOCKER",
        "API",
        "OS",
        "KERNEL",
        "ARCH",
        "CPUS",
        "MEMORY",
        "CONTAINERS",
        "IMAGES",
        "STORAGE",
        "CGROUP",
        "ROOT DIR",
    )
    for column in columns:
        numeric = column in ("CPUS", "MEMORY", "IMAGES")
        table.add_column(column, no_wrap=True, justify="right" if numeric else "left")
    for host, i in sorted(result.replies.items()):
        table.add_row(
            host,
            i.server_version,
            i.api_version,
            i.operating_system,
            i.kernel,
            i.architecture,
            str(i.cpus),
            human_size(i.memory_total),
            f"{i.containers_running}/{i.containers} running",
            str(i.images),
            i.storage_driver,
            f"{i.cgroup_driver} v{i.cgroup_version}" if i.cgroup_version else i.cgroup_driver,
            i.docker_root_dir,
        )
    out.print(table)


def info(
    ctx: typer.Context,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    retries: RetriesOpt = 0,
    json_: JsonOpt = False,
) -> None:
    """Docker engine details of every targeted host, as `docker info` shows them."""
    selection = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx,
        server,
        timeout,
        lambda fleet: fleet.info(selector=selection, limit=sample, retries=retries),
    )
    show_result(result, render_info, json_=json_)
