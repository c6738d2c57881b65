"""``shoal top``: the fleet live in the terminal, from heartbeats and events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shoal.protocol import InvalidSelector, Selector, utcnow

from ..errors import FleetError
from .common import HostsOpt, LabelsOpt, ServerOpt, build_selector, human_size, make_fleet, out, run

if TYPE_CHECKING:
    from ..desired import Convergence
    from ..fleet import Fleet
    from ..live import FleetView, HostRow

STATE_STYLE = {
    "online": "green",
    "offline": "red",
    "docker-down": "red",
    "clock-skew": "yellow",
    "insecure": "yellow",
}
SORTS = ("state", "host", "cpu", "memory", "containers", "version")


@dataclass
class Screen:
    """What the viewer chose: sort, filter, page, the host drilled into, a prompt."""

    sort: str = "state"
    selector: Selector | None = None
    selector_text: str = ""
    page: int = 0
    host: str | None = None
    prompt: str | None = None  # "filter" or "host" while typing
    typed: str = ""
    message: str = ""
    convergence: list[Convergence] = field(default_factory=list)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mem(row: HostRow) -> str:
    if row.memory is None:
        return "-"
    total = f"/{human_size(row.memory_total)}" if row.memory_total else ""
    return f"{human_size(row.memory)}{total}"


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def render(view: FleetView, screen: Screen, height: int) -> RenderableType:
    """One frame: summary, hosts (one page), services, events, and the keys."""
    now = utcnow()
    rows = view.rows(selector=screen.selector, sort=screen.sort)
    counts = view.counts(rows)
    summary = Text()
    summary.append("shoal top", style="bold")
    summary.append(f"  {len(rows)} hosts: ")
    for state in ("online", "offline", "docker-down", "clock-skew", "insecure"):
        if counts[state]:
            summary.append(f"{counts[state]} {state}  ", style=STATE_STYLE[state])
    summary.append(f"· sort {screen.sort}", style="dim")
    if screen.selector_text:
        summary.append(f" · filter {screen.selector_text}", style="dim")
    parts: list[RenderableType] = [summary]
    if screen.host is not None:
        parts.append(_host_detail(view, screen.host))
    else:
        room = max(3, height - 16)
        pages = max(1, -(-len(rows) // room))
        screen.page = min(screen.page, pages - 1)
        shown = rows[screen.page * room : (screen.page + 1) * room]
        table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
        for column in (
            "HOST", "STATE", "ARCH", "AGENT", "CONTAINERS", "RUNNING", "CPU%", "MEMORY",
            "SERVICES", "SEEN",
        ):  # fmt: skip
            table.add_column(column, no_wrap=True)
        for row in shown:
            services = str(row.services) + (
                f" ({row.unhealthy} unhealthy)" if row.unhealthy else ""
            )
            table.add_row(
                row.host,
                Text(row.state, STATE_STYLE.get(row.state, "")),
                row.arch,
                row.version,
                "-" if row.containers is None else str(row.containers),
                "-" if row.running is None else str(row.running),
                _pct(row.cpu_percent),
                _mem(row),
                services,
                _ago((now - row.last_seen).total_seconds()),
            )
        parts.append(table)
        if pages > 1:
            parts.append(Text(f"page {screen.page + 1}/{pages} (PgUp/PgDn)", style="dim"))
    if screen.convergence:
        parts.append(_services(screen.convergence))
    parts.append(_events(view, screen.host))
    keys = "s sort · / filter · h host · n/p page · Esc back · q quit"
    if screen.prompt is not None:
        keys = f"{screen.prompt}: {screen.typed}_   (Enter to apply, Esc to cancel)"
    parts.append(Text(keys + (f"   {screen.message}" if screen.message else ""), style="dim"))
    return Group(*parts)


def _host_detail(view: FleetView, host: str) -> RenderableType:
    record = view.host(host)
    if record is None:
        return Text(f"no host {host!r}", style="red")
    facts = record.facts
    lines = Text()
    lines.append(f"{host}", style="bold")
    lines.append(
        f"  {facts.os}/{facts.arch}  kernel {facts.kernel}  agent {facts.agent_version}"
        f"  docker {facts.docker.version or 'unreachable'}\n"
    )
    labels = ", ".join(f"{k}={v}" for k, v in sorted(facts.labels.items())) or "-"
    lines.append(f"labels {labels}\n", style="dim")
    table = Table(box=None, pad_edge=False, header_style="bold", title="services")
    for column in ("SERVICE", "REVISION", "STATE", "HEALTH", "SPEC"):
        table.add_column(column, no_wrap=True)
    for beat in facts.services:
        table.add_row(beat.name, str(beat.revision), beat.state, beat.health or "-", beat.spec_hash)
    return Group(lines, table)


def _services(items: list[Convergence]) -> RenderableType:
    table = Table(box=None, pad_edge=False, header_style="bold", title="declared services")
    for column in ("SERVICE", "GEN", "CONVERGED", "PENDING", "DEPLOYING", "DRIFTED", "FAILED"):
        table.add_column(column, no_wrap=True)
    by: dict[tuple[str, int], dict[str, int]] = {}
    for c in items:
        by.setdefault((c.service, c.generation), {}).setdefault(str(c.state), 0)
        by[(c.service, c.generation)][str(c.state)] += 1
    for (service, generation), states in sorted(by.items()):
        table.add_row(
            service,
            str(generation),
            *(
                str(states.get(s, 0))
                for s in ("converged", "pending", "deploying", "drifted", "failed")
            ),
        )
    return table


def _events(view: FleetView, host: str | None) -> RenderableType:
    table = Table(box=None, pad_edge=False, header_style="bold", title="recent events")
    for column in ("TIME", "HOST", "EVENT"):
        table.add_column(column, no_wrap=True)
    for event in reversed(view.recent(8, host)):
        table.add_row(f"{event.at:%H:%M:%S}", event.host_id, event.message)
    return table


@contextlib.contextmanager
def _keys(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str]) -> Iterator[None]:
    """Keys typed on the terminal, one character at a time, into ``queue``."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                char = os.read(fd, 16).decode(errors="ignore")
            except OSError:
                return
            for key in split_keys(char):
                loop.call_soon_threadsafe(queue.put_nowait, key)

    tty.setcbreak(fd)
    thread = threading.Thread(target=read, name="shoal-top-keys", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def split_keys(text: str) -> list[str]:
    """Typed text as keys: one character each, an escape sequence (PgDn: ESC [ 6 ~) whole."""
    keys: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b" and i + 1 < len(text) and text[i + 1] == "[":
            end = i + 2
            while end < len(text) and not (text[end].isalpha() or text[end] == "~"):
                end += 1
            keys.append(text[i : end + 1])
            i = end + 1
        else:
            keys.append(text[i])
            i += 1
    return keys


def handle_key(screen: Screen, key: str) -> bool:
    """Apply one key; False to quit."""
    if screen.prompt is not None:
        if key in ("\r", "\n"):
            text, prompt = screen.typed.strip(), screen.prompt
            screen.prompt, screen.typed = None, ""
            if prompt == "filter":
                try:
                    words = text.split()
                    hosts = [w[3:] for w in words if w.startswith("-H=")]
                    labels = [w for w in words if not w.startswith("-H=")]
                    screen.selector = Selector.build(hosts=hosts, labels=labels) if text else None
                    screen.selector_text = text
                    screen.message = ""
                except InvalidSelector as exc:
                    screen.message = exc.message
            else:
                screen.host = text or None
        elif key == "\x1b":
            screen.prompt, screen.typed = None, ""
        elif key in ("\x7f", "\b"):
            screen.typed = screen.typed[:-1]
        elif key.isprintable():
            screen.typed += key
        return True
    if key in ("q", "\x03"):
        return False
    if key == "s":
        screen.sort = SORTS[(SORTS.index(screen.sort) + 1) % len(SORTS)]
    elif key == "/":
        screen.prompt = "filter"
    elif key == "h":
        screen.prompt = "host"
    elif key in ("n", "\x1b[6~"):
        screen.page += 1
    elif key in ("p", "\x1b[5~"):
        screen.page = max(0, screen.page - 1)
    elif key == "\x1b":
        screen.host = None
    return True


async def _convergence(fleet: Fleet, view: FleetView, screen: Screen) -> None:
    """Every few seconds: where the declared services stand (without JetStream: none)."""
    from ..desired import statuses

    store = fleet.desired_store()
    while True:
        with contextlib.suppress(FleetError):
            declarations = await store.declarations()
            records = await store.all_records() if declarations else {}
            screen.convergence = statuses(declarations, list(view.hosts.values()), records)
            view.changed.set()
        await asyncio.sleep(5.0)  # the refresh period of the services panel


def top(
    ctx: typer.Context,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit (for scripts).")
    ] = False,
    server: ServerOpt = None,
) -> None:
    """The fleet live: hosts and their state, services, recent events.

    Refreshed from heartbeats and events, not by asking every host. Keys: s sorts, /
    filters by selector (for example role=web -H=web-*), h drills into a host, n and p
    page, Esc goes back, q quits.
    """
    start_selector = build_selector(host, selector)
    fleet = make_fleet(ctx, server)
    screen = Screen(selector=start_selector if (host or selector) else None)
    screen.selector_text = " ".join([*(f"-H={h}" for h in host or []), *(selector or [])])

    async def work() -> None:
        from ..live import FleetView

        async with fleet, FleetView(fleet) as view:
            if once:
                await asyncio.sleep(min(2.0, fleet.discovery_window * 2))  # a first beat
                out.print(render(view, screen, out.console.size.height or 50))
                return
            loop = asyncio.get_running_loop()
            keys: asyncio.Queue[str] = asyncio.Queue()
            refresher = asyncio.create_task(_convergence(fleet, view, screen))
            try:
                with (
                    _keys(loop, keys),
                    Live(
                        render(view, screen, out.console.size.height),
                        console=out.console,
                        screen=True,
                        auto_refresh=False,
                    ) as live,
                ):
                    while True:
                        getter = asyncio.ensure_future(keys.get())
                        changed = asyncio.ensure_future(view.changed.wait())
                        done, pending = await asyncio.wait(
                            {getter, changed}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in pending:
                            task.cancel()
                        if getter in done and not handle_key(screen, getter.result()):
                            return
                        view.changed.clear()
                        live.update(render(view, screen, out.console.size.height), refresh=True)
            finally:
                refresher.cancel()

    run(work())
