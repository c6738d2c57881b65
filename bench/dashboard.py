"""Benchmark 7: the web dashboard (``shoal serve --web``) over 1,000 simulated hosts.

7a. **Server CPU** (target: under 5 % of one core). A real nats-server with JetStream
and ``bench/heartbeatsim.py`` publishing valid heartbeats for 1,000 simulated hosts
(every 5 s each, spread evenly: 200 a second; nothing declared). ``shoal serve`` runs
as its own process; after it took the lease and settled, its CPU time (utime + stime
from ``/proc/PID/stat``) is read over a window. Four windows, one after the other:
plain ``shoal serve`` (no dashboard), then ``shoal serve --web 127.0.0.1:PORT`` with no
page open, with one bare server-sent-events client (this process reading the stream,
nothing rendered), and with the page open in a real headless Chromium. In every
window, the floor: a process that subscribes to the same heartbeats with nats-py and
validates each with ``AgentFacts.model_validate_json``, nothing else (converge's floor).

7b. **State change to the page** (target: under 1 s). With the page open in Chromium
(as in the last window), the simulator changes one host: its container count, the
host leaving (its agent's last heartbeat, then silence) and coming back. The
simulator stamps the wall clock just before it publishes the changed heartbeat; in
the page, a ``MutationObserver`` on the hosts table stamps
``performance.timeOrigin + performance.now()`` when the host's row first shows the
change (and the next animation frame after it, and the arrival of the server-sent
event that carried it, from a listener added to the page's ``EventSource``). The
page's clock is compared with this process's ``time.time()`` before each change
(the offset is subtracted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats

from bench.common import Table, child_env, cpu_seconds, fmt, log, median, ms, rss_bytes
from bench.converge import LEASE_LINE, BeatCounter, Child, serve_argv
from bench.realstack import RealStack, wait_online

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from shoal.controller.fleet import Fleet
    from tests.browser import Browser

PREFIX = "benchdash"
SIM_INTERVAL = 5.0
CONTAINERS = 3
"""Containers each simulated host reports (the changes count up from here)."""
CPU_TARGET = 5.0
"""Per cent of one core."""
LATENCY_TARGET = 1.0
"""Seconds from the changed heartbeat's publish to the page showing it."""
CONTROL = "bench.dashboard.control"
MiB = 2**20
HOST_COLUMNS = ("Host", "State", "Arch", "Agent", "Containers")
"""The first cells of a row of the page's hosts table (index = column)."""

PAGE_HOOK = r"""
(() => {
  const B = window.__bench = {frames: 0, bytes: 0, last: null, watch: null};
  const now = () => performance.timeOrigin + performance.now();
  B.now = now;
  const Original = window.EventSource;
  window.EventSource = class extends Original {
    constructor(url, init) {
      super(url, init);
      // Added before the page sets onmessage, so it runs first: the arrival.
      this.addEventListener("message", m => {
        B.frames += 1; B.bytes += m.data.length; B.last = now();
      });
    }
  };
  B.check = () => {
    const w = B.watch;
    if (!w || w.seen !== null) return;
    const row = document.querySelector('tr.host[data-host="' + w.host + '"]');
    if (row && row.children[w.cell] && row.children[w.cell].textContent === w.text) {
      w.seen = now();
      w.frame = B.last;
      requestAnimationFrame(() => { w.painted = now(); });
    }
  };
  B.arm = (host, cell, text) => {
    B.watch = {host, cell, text, seen: null, frame: null, painted: null};
    if (!B.observer) {
      B.observer = new MutationObserver(B.check);
      B.observer.observe(document.querySelector("#hosts tbody"), {childList: true, subtree: true});
    }
    B.check();
    return B.watch.seen === null;
  };
  B.wait = timeout => new Promise(resolve => {
    const end = Date.now() + timeout;
    const poll = () => {
      const w = B.watch;
      if ((w.seen !== null && w.painted !== null) || Date.now() > end) resolve(w);
      else setTimeout(poll, 20);
    };
    poll();
  });
})();
"""


@dataclass
class DashboardConfig:
    hosts: int = 1000
    window: float = 60.0
    """Seconds of each CPU window (7a)."""
    settle: float = 10.0
    """Seconds between a change of setup (a process, a client) and its window."""
    repeats: int = 7
    """State changes of each kind (7b)."""


# --------------------------------------------------------------------------- 7a. CPU


@dataclass
class Window:
    label: str
    seconds: float
    cpu: dict[str, float]
    rss: dict[str, int] = field(default_factory=dict)
    heartbeats: int = 0
    frames: int = 0
    frame_bytes: int = 0
    """Server-sent events the client of the window received, and their size."""

    def percent(self, name: str) -> float:
        if name not in self.cpu or not self.seconds:
            return float("nan")
        return self.cpu[name] / self.seconds * 100


@dataclass
class Change:
    kind: str
    published: float
    seen: float
    painted: float | None
    frame: float | None
    offset: float
    """Page clock minus ours, subtracted from the page's stamps."""
    uncertainty: float

    @property
    def latency(self) -> float:
        return self.seen - self.published

    @property
    def server(self) -> float | None:
        """Publish to the arrival of the event that carried the change."""
        return None if self.frame is None else self.frame - self.published

    @property
    def render(self) -> float | None:
        return None if self.frame is None else self.seen - self.frame

    @property
    def paint(self) -> float | None:
        return None if self.painted is None else self.painted - self.seen


@dataclass
class Results:
    windows: list[Window] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    browser: str | None = None
    """Why no Chromium window or latency was measured, or None."""
    problems: list[str] = field(default_factory=list)
    published: int = 0


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process of a process group (Chromium's processes)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def group_rss_bytes(pgid: int) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                total += rss_bytes(int(entry.name))
        except (OSError, ValueError):
            continue
    return total


async def measure(
    label: str, seconds: float, pids: dict[str, int], pgids: dict[str, int]
) -> Window:
    """CPU seconds of each process (and process group) over ``seconds``."""

    def sample() -> dict[str, float]:
        out = {name: cpu_seconds(pid) for name, pid in pids.items()}
        out.update({name: group_cpu_seconds(pgid) for name, pgid in pgids.items()})
        return out

    cpu0 = sample()
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1 = sample()
    window = time.perf_counter() - t0
    rss = {name: rss_bytes(pid) for name, pid in pids.items()}
    rss.update({name: group_rss_bytes(pgid) for name, pgid in pgids.items()})
    return Window(label, window, {n: cpu1[n] - cpu0[n] for n in cpu0}, rss)


class StreamClient:
    """A bare server-sent-events client: reads ``/api/stream``, counts what comes."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frames = 0
        self.bytes = 0
        self._task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(
                f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                "Accept: text/event-stream\r\n\r\n".encode()
            )
            await writer.drain()
            while chunk := await reader.read(256 * 1024):
                self.frames += chunk.count(b"data: ")
                self.bytes += len(chunk)
        finally:
            writer.close()

    async def counters(self) -> tuple[int, int]:
        return self.frames, self.bytes

    async def __aenter__(self) -> StreamClient:
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await self._task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sim_argv(stack: RealStack, hosts: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.heartbeatsim",
        "publish",
        "--url",
        stack.nats.url,
        "--prefix",
        PREFIX,
        "--hosts",
        str(hosts),
        "--interval",
        str(SIM_INTERVAL),
        "--label",
        "role=sim",
        "--containers",
        str(CONTAINERS),
        "--control",
        CONTROL,
    ]


Counters = Callable[[], Awaitable[tuple[int, int]]]
"""Events and bytes the window's client has received so far."""


async def _window(
    label: str,
    config: DashboardConfig,
    fleet: Fleet,
    pids: dict[str, int],
    pgids: dict[str, int] | None = None,
    counters: Counters | None = None,
) -> Window:
    await asyncio.sleep(config.settle)
    beats = BeatCounter(fleet)
    before = await counters() if counters is not None else (0, 0)
    async with beats:
        window = await measure(label, config.window, pids, pgids or {})
    after = await counters() if counters is not None else (0, 0)
    window.heartbeats = beats.count
    window.frames, window.frame_bytes = after[0] - before[0], after[1] - before[1]
    log(
        f"dashboard: {label}: shoal serve {window.percent('serve'):.2f} %, floor "
        f"{window.percent('floor'):.2f} % of one core over {window.seconds:.0f}s "
        f"({window.heartbeats / window.seconds:.0f} heartbeats/s, "
        f"{window.frames / window.seconds:.2f} events/s to the client)"
        + (f", chromium {window.percent('chromium'):.1f} %" if "chromium" in window.cpu else "")
    )
    return window


def _get(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return bool(reply.status == 200)


async def _wait_page(port: int, serve: Child, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/api/fleet"):
                return
        if serve.process.poll() is not None:
            raise RuntimeError("shoal serve --web exited:\n" + serve.text()[-2000:])
        if time.monotonic() > end:
            raise RuntimeError(f"the dashboard did not answer after {timeout:.0f}s")
        await asyncio.sleep(0.1)


# --------------------------------------------------------------------------- 7b. latency


class Page:
    """The dashboard in headless Chromium (tests/browser.py), with the benchmark's hook."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser

    @classmethod
    async def open(cls, url: str) -> Page:
        from tests.browser import Browser

        browser = await asyncio.to_thread(Browser)
        page = cls(browser)
        try:
            await page.call("Page.enable")
            await page.call("Page.addScriptToEvaluateOnNewDocument", source=PAGE_HOOK)
            await page.call("Page.navigate", url=url)
            end = time.monotonic() + 30
            while not await page.evaluate(
                "document.querySelectorAll('tr.host').length > 0 && window.__bench.frames > 0"
            ):
                if time.monotonic() > end:
                    raise RuntimeError("the page shows no host after 30s")
                await asyncio.sleep(0.2)
        except BaseException:
            browser.close()
            raise
        return page

    @property
    def pgid(self) -> int:
        return self.browser.process.pid

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.browser.call, method, **params)

    async def evaluate(self, expression: str) -> Any:
        return await asyncio.to_thread(self.browser.evaluate, expression)

    async def counters(self) -> tuple[int, int]:
        value = await self.evaluate("[window.__bench.frames, window.__bench.bytes]")
        return int(value[0]), int(value[1])

    async def offset(self) -> tuple[float, float]:
        """The page's clock minus ours (s), and half the round trip it was read in."""
        best: tuple[float, float] | None = None
        for _ in range(5):
            before = time.time()
            page = float(await self.evaluate("window.__bench.now()")) / 1000
            after = time.time()
            measured = (page - (before + after) / 2, (after - before) / 2)
            if best is None or measured[1] < best[1]:
                best = measured
        assert best is not None
        return best

    def close(self) -> None:
        self.browser.close()


async def change(
    control: NATS, page: Page, kind: str, host: str, request: dict[str, Any], cell: int, text: str
) -> Change:
    offset, uncertainty = await page.offset()
    armed = await page.evaluate(
        f"window.__bench.arm({json.dumps(host)}, {cell}, {json.dumps(text)})"
    )
    if not armed:
        raise RuntimeError(f"{host} already shows {text!r} in column {HOST_COLUMNS[cell]}")
    reply = await control.request(CONTROL, json.dumps({"host": host, **request}).encode(), 10)
    answer = json.loads(reply.data)
    if "error" in answer:
        raise RuntimeError(f"the simulator refused {request}: {answer['error']}")
    published = float(answer["published"])
    watch = await page.evaluate(f"window.__bench.wait({int((LATENCY_TARGET * 10) * 1000)})")
    if watch is None or watch.get("seen") is None:
        raise RuntimeError(f"{kind}: the page did not show {host} {text!r} within 10s")

    def ours(stamp: float | None) -> float | None:
        return None if stamp is None else stamp / 1000 - offset

    seen = ours(watch["seen"])
    assert seen is not None
    return Change(
        kind,
        published,
        seen,
        ours(watch.get("painted")),
        ours(watch.get("frame")),
        offset,
        uncertainty,
    )


KINDS = (
    ("container count changes", "containers"),
    ("host leaves (offline)", "leaving"),
    ("host comes back (online)", "online"),
)


async def latencies(control: NATS, page: Page, config: DashboardConfig, results: Results) -> None:
    """``repeats`` rounds of the three changes, at random phases of the push period."""
    rng = random.Random(7)
    counter = CONTAINERS
    hosts = [f"sim-{i:05d}" for i in range(config.hosts)]
    for index in range(config.repeats + 1):  # round 0 is a warm-up
        host = hosts[rng.randrange(len(hosts))]
        counter += 1
        steps: list[tuple[str, dict[str, Any], int, str]] = [
            ("container count changes", {"containers": counter}, 4, str(counter)),
            ("host leaves (offline)", {"status": "leaving"}, 1, "offline"),
            ("host comes back (online)", {"status": "online"}, 1, "online"),
        ]
        for kind, request, cell, text in steps:
            await asyncio.sleep(rng.uniform(1.0, 2.0))
            measured = await change(control, page, kind, host, request, cell, text)
            log(
                f"dashboard: {kind} ({host}): {ms(measured.latency)} ms to the page"
                f" (event {ms(measured.server or float('nan'))} ms, render "
                f"{ms(measured.render or float('nan'))} ms)" + (" warm-up" if index == 0 else "")
            )
            if index > 0:
                results.changes.append(measured)


# --------------------------------------------------------------------------- run


async def run(stack: RealStack, config: DashboardConfig) -> list[Table]:
    results = Results()
    stack.start_nats()
    env = child_env(stack.workdir)
    fleet = stack.fleet(PREFIX, timeout=30.0)
    logs = stack.workdir / "dashboard"
    children: list[Child] = []
    page: Page | None = None
    from tests.browser import chromium_available

    results.browser = chromium_available()
    try:
        async with fleet:
            await fleet.init_registry()
            sim = Child(sim_argv(stack, config.hosts), logs / "heartbeatsim.log", env)
            children.append(sim)
            await sim.wait_for("cycled", timeout=SIM_INTERVAL * 3 + 30)
            await wait_online(fleet, config.hosts)
            floor = Child(
                [
                    sys.executable,
                    "-m",
                    "bench.heartbeatsim",
                    "listen",
                    "--url",
                    stack.nats.url,
                    "--prefix",
                    PREFIX,
                ],
                logs / "floor.log",
                env,
            )
            children.append(floor)
            await floor.wait_for("ready", timeout=30)
            common = {"floor": floor.pid, "nats-server": stack.nats.pid, "simulator": sim.pid}

            # Plain shoal serve: the reconciler alone.
            plain = Child(serve_argv(stack, PREFIX), logs / "serve-plain.log", env)
            children.append(plain)
            await plain.wait_for(LEASE_LINE, timeout=60)
            window = await _window(
                "`shoal serve` (no dashboard)", config, fleet, {"serve": plain.pid, **common}
            )
            results.windows.append(window)
            plain.stop()

            # shoal serve --web: no client, a bare SSE client, the page in Chromium.
            port = free_port()
            argv = [*serve_argv(stack, PREFIX), "--web", f"127.0.0.1:{port}"]
            web = Child(argv, logs / "serve-web.log", env)
            children.append(web)
            await web.wait_for(LEASE_LINE, timeout=60)
            await _wait_page(port, web)
            pids = {"serve": web.pid, **common}
            window = await _window("`shoal serve --web`, no page open", config, fleet, pids)
            results.windows.append(window)

            async with StreamClient(port) as client:
                window = await _window(
                    "`shoal serve --web`, one bare SSE client",
                    config,
                    fleet,
                    pids,
                    counters=client.counters,
                )
            results.windows.append(window)

            if results.browser is None:
                page = await Page.open(f"http://127.0.0.1:{port}/")
                window = await _window(
                    "`shoal serve --web`, the page open in Chromium",
                    config,
                    fleet,
                    pids,
                    {"chromium": page.pgid},
                    counters=page.counters,
                )
                results.windows.append(window)
                control = await nats.connect(stack.nats.url, name="shoal-bench-control")
                try:
                    await latencies(control, page, config, results)
                finally:
                    await control.close()
            else:
                log(f"dashboard: no Chromium window, no latency: {results.browser}")
            if web.process.poll() is not None:
                results.problems.append(f"shoal serve --web exited with {web.process.returncode}")
    finally:
        if page is not None:
            page.close()
        for child in reversed(children):
            child.stop()
    stopped = children[0].event("stopped") if children else None
    results.published = int(stopped.get("messages", 0)) if stopped else 0
    if len(children) > 1:
        done = children[1].event("stopped")
        if done is None or done.get("invalid"):
            results.problems.append(f"the floor process ended with {done}")
    return [cpu_table(results, config), latency_table(results, config)]


# --------------------------------------------------------------------------- tables


def cpu_table(results: Results, config: DashboardConfig) -> Table:
    table = Table(
        "dashboard-cpu",
        f"7a. Dashboard server CPU with {config.hosts:,} simulated hosts heartbeating, "
        "against the floor of reading their heartbeats",
        [
            "measure",
            "`shoal serve` (% of one core)",
            "floor (% of one core)",
            "vs floor",
            "above plain `shoal serve` (points)",
            "target (< 5 %)",
            "RSS serve / floor (MiB)",
            "heartbeats/s",
            "events/s to the client (KiB each)",
        ],
    )
    plain = results.windows[0].percent("serve") if results.windows else float("nan")
    for window in results.windows:
        serve, floor = window.percent("serve"), window.percent("floor")
        web = "--web" in window.label
        frames = "-"
        if window.frames:
            size = window.frame_bytes / window.frames / 1024
            frames = f"{window.frames / window.seconds:.2f} ({size:,.0f})"
        table.add(
            window.label,
            fmt(serve),
            fmt(floor),
            f"{serve / floor:.2f}x" if floor else "-",
            f"{serve - plain:+.2f}" if web else "-",
            ("met" if serve < CPU_TARGET else "missed") if web else "-",
            f"{window.rss['serve'] / MiB:.1f} / {window.rss['floor'] / MiB:.1f}",
            fmt(window.heartbeats / window.seconds),
            frames,
        )
    if results.browser is not None:
        table.add("`shoal serve --web`, the page open in Chromium", f"not run: {results.browser}",
                  "-", "-", "-", "-", "-", "-", "-")  # fmt: skip
    context = "; ".join(
        f"{w.label}: nats-server {fmt(w.percent('nats-server'))} %, simulator "
        f"{fmt(w.percent('simulator'))} %"
        + (
            f", Chromium (all its processes) {fmt(w.percent('chromium'))} %, "
            f"{w.rss['chromium'] / MiB:,.0f} MiB"
            if "chromium" in w.cpu
            else ""
        )
        for w in results.windows
    )
    table.notes += [
        f"{config.hosts:,} simulated hosts (`bench/heartbeatsim.py`, one process) publish "
        f"a valid `AgentFacts` heartbeat every {SIM_INTERVAL:g} s each, spread evenly "
        f"({config.hosts / SIM_INTERVAL:,.0f} a second), each reporting {CONTAINERS} "
        "containers and one service; nothing is declared. `shoal serve` is the real command "
        "(its own process, signed with the benchmark's key), measured from `/proc/PID/stat` "
        f"(utime + stime) over {fmt(config.window)} s after it took the lease (and, for "
        f"a client, after the client connected) and {fmt(config.settle)} s more.",
        "The windows run one after the other: plain `shoal serve`; then it stops and "
        "`shoal serve --web 127.0.0.1:PORT` takes the lease: no page open, one bare "
        "server-sent-events client (this process reading `/api/stream`, nothing parsed), "
        "the page open in headless Chromium (`tests/browser.py`: the page's own "
        "`EventSource` and rendering). The target is for the whole `shoal serve --web` "
        "process (reconciler and dashboard); 'above plain' is the dashboard's share.",
        "Floor, in each window: a process that subscribes to the same heartbeats with "
        "nats-py and validates each with `AgentFacts.model_validate_json`, nothing else.",
        f"Same windows, for context (not in the comparison): {context}.",
    ]
    table.notes += sorted(set(results.problems))[:5]
    return table


def _stat(values: list[float]) -> tuple[str, str]:
    if not values:
        return "-", "-"
    return ms(median(values)), f"{ms(min(values))}-{ms(max(values))}"


def latency_table(results: Results, config: DashboardConfig) -> Table:
    table = Table(
        "dashboard-latency",
        "7b. From a host's changed heartbeat to the page showing it (headless Chromium)",
        [
            "change",
            "median (ms)",
            "runs (ms)",
            "target (< 1 s)",
            "of which: to the event's arrival (ms)",
            "of which: the page's render (ms)",
            "then: next frame (ms)",
        ],
    )
    if results.browser is not None:
        table.add("all", f"not run: {results.browser}", "-", "-", "-", "-", "-")
        return table
    groups = [(kind, [c for c in results.changes if c.kind == kind]) for kind, _ in KINDS]
    groups.append(("**all changes**", list(results.changes)))
    for kind, changes in groups:
        latency = [c.latency for c in changes]
        server = [c.server for c in changes if c.server is not None]
        render = [c.render for c in changes if c.render is not None]
        paint = [c.paint for c in changes if c.paint is not None]
        value, runs = _stat(latency)
        table.add(
            kind,
            value,
            runs,
            ("met" if max(latency) < LATENCY_TARGET else "missed") if latency else "-",
            "{} ({})".format(*_stat(server)),
            "{} ({})".format(*_stat(render)),
            "{} ({})".format(*_stat(paint)),
        )
    offsets = [c.offset for c in results.changes]
    uncertainty = max((c.uncertainty for c in results.changes), default=float("nan"))
    table.notes += [
        f"{config.repeats} rounds after a warm-up round; each round picks a simulated host "
        "and, 1-2 s apart (random, so the changes fall at any point of the dashboard's "
        "push period), raises its container count by one, makes it leave (the heartbeat "
        "of an agent that stops, `status: leaving`; then it is silent) and brings it back. "
        "The target counts as met when every run is under 1 s.",
        "Publish: the simulator's `time.time()` just before it publishes the changed "
        "heartbeat. Shown: a `MutationObserver` on the page's hosts table, when the host's "
        "row first shows the new count or state (`performance.timeOrigin + "
        "performance.now()`); the event's arrival: a `message` listener added to the "
        "page's `EventSource` before its own; next frame: the first `requestAnimationFrame` "
        "after it (headless Chromium runs it at once: a lower bound, not a screen's paint).",
        f"The page's clock minus this machine's `time.time()`, read before each change: "
        f"{ms(min(offsets, default=float('nan')))} to {ms(max(offsets, default=float('nan')))} ms "
        f"(read within ±{ms(uncertainty)} ms); subtracted from the page's stamps.",
    ]
    return table
