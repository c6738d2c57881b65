"""Benchmark 1: fan-out at scale, over a simulated fleet on one real nats-server.

N real agent runtimes (their engine replaced by :class:`bench.simengine.SimEngine`)
run in a few worker processes. The fleet grows 100 → 1,000 → 5,000 → 10,000 and,
at each size, the controller's ``Fleet.ps()`` and the ``shoal ps`` and
``shoal agents`` commands run over the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import re
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.common import (
    BenchKey,
    Table,
    child_env,
    cpu_seconds,
    fmt,
    log,
    median,
    ms,
    ratio,
    rss_bytes,
    spread,
    thread_count,
    tool,
)
from shoal.controller.fleet import Fleet
from shoal.protocol import NatsOptions
from tests.stack import NatsServer, remove_tree, short_tempdir

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
PREFIX = "shoal"
CEILING_PREFIX = "ceiling"
HOST_PREFIX = "sim"
WORKER_STOP_DEADLINE = 120.0

# The server keeps a client whose socket buffer fills (the controller reading
# 10,000 replies) for up to write_deadline before calling it a slow consumer.
NATS_CONFIG = """\
max_connections: 100000
max_pending: 268435456
write_deadline: "30s"
"""


@dataclass
class FanoutConfig:
    sizes: list[int]
    workers: int = 4
    repeats: int = 5
    cli_repeats: int = 3
    """CLI runs per command below 5,000 agents; 2 below 10,000, then 1 (see cli_runs)."""
    heartbeat_interval: float = 60.0
    timeout: float = 30.0
    containers: int = 5
    running: int = 3
    profile: bool = True
    signed: bool = True


@dataclass
class CeilingResult:
    n: int
    mode: str = "signed"
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    replies: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cli_json: list[float] = field(default_factory=list)
    cli_notes: list[str] = field(default_factory=list)


@dataclass
class SizeResult:
    n: int
    added: int
    grow_seconds: float
    grow_failed: int
    worker_rss: int
    worker_threads: int
    idle_cpu: float
    agents_s: list[float] = field(default_factory=list)
    ps_wall: list[float] = field(default_factory=list)
    ps_cpu: list[float] = field(default_factory=list)
    ps_replies: list[int] = field(default_factory=list)
    ps_missing: list[int] = field(default_factory=list)
    ps_errors: list[int] = field(default_factory=list)
    fleet_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    cli: dict[str, list[float]] = field(default_factory=dict)
    cli_ok: dict[str, list[bool]] = field(default_factory=dict)
    cli_notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Workers:
    """Worker processes driven over their stdin/stdout (:mod:`bench.fleetsim` or
    :mod:`bench.responder`); hosts are spread evenly over them."""

    def __init__(
        self, module: str, args: list[str], count: int, workdir: Path, host_prefix: str
    ) -> None:
        self.argv = [sys.executable, "-m", module, *args]
        self.count = count
        self.workdir = workdir
        self.name = module.rsplit(".", 1)[-1]
        self.host_prefix = host_prefix
        self.procs: list[asyncio.subprocess.Process] = []
        self.size = 0

    async def start(self) -> None:
        for index in range(self.count):
            with self._log(index).open("wb") as errors:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=errors,
                    cwd=REPO_ROOT,
                    limit=1 << 20,
                )
            self.procs.append(proc)
        for index in range(len(self.procs)):
            await self._expect(index, "ready", 60)

    def _log(self, index: int) -> Path:
        return self.workdir / f"{self.name}-{index}.log"

    async def _send(self, index: int, command: dict[str, Any]) -> None:
        stdin = self.procs[index].stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        await stdin.drain()

    async def _expect(self, index: int, event: str, timeout: float) -> dict[str, Any]:
        stdout = self.procs[index].stdout
        assert stdout is not None
        line = await asyncio.wait_for(stdout.readline(), timeout)
        if not line:
            tail = self.log_tail(index)
            raise RuntimeError(f"{self.name} worker {index} exited; its log ends:\n{tail}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"{self.name} worker {index}: expected {event}, got {message}")
        return message

    def log_tail(self, index: int, lines: int = 20) -> str:
        try:
            text = self._log(index).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    async def grow_to(self, n: int) -> tuple[float, int]:
        """Add hosts until there are ``n``; (seconds, hosts that failed to start)."""
        add = n - self.size
        if add <= 0:
            return 0.0, 0
        workers = len(self.procs)
        t0 = time.perf_counter()
        start = self.size
        for index in range(workers):
            count = add // workers + (1 if index < add % workers else 0)
            command = {"cmd": "grow", "prefix": self.host_prefix, "start": start, "count": count}
            await self._send(index, command)
            start += count
        failed = 0
        for index in range(workers):
            grown = await self._expect(index, "grown", 1800)
            failed += int(grown["failed"])
            if grown["failed"]:
                log(f"{self.name} {index}: {grown['failed']} hosts failed: {grown['errors']}")
        self.size = n
        return time.perf_counter() - t0, failed

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.returncode is None]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    async def stop(self) -> None:
        """Ask every worker to stop and exit; kill it by its pid past the deadline."""
        for index, proc in enumerate(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(Exception):
                    await self._send(index, {"cmd": "stop"})
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), WORKER_STOP_DEADLINE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self.procs.clear()


async def run_cli(argv: list[str], env: dict[str, str]) -> tuple[float, int, bytes, bytes]:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await proc.communicate()
    seconds = time.perf_counter() - t0
    return seconds, proc.returncode or 0, stdout, stderr


_ANSWERED = re.compile(rb"(\d+)/(\d+) hosts answered ok")
_AGENTS = re.compile(rb"(\d+) hosts, (\d+) online")


def _check_cli(name: str, n: int, rc: int, stdout: bytes, stderr: bytes) -> str | None:
    """Why a CLI run did not cover the whole fleet, or None when it did."""
    if name == "shoal ps --json":
        try:
            document = json.loads(stdout)
            replies = len(document.get("replies", {}))
        except (ValueError, AttributeError):
            return f"exit {rc}, no JSON document"
        return None if rc == 0 and replies == n else f"exit {rc}, {replies}/{n} replies"
    if name == "shoal ps":
        m = _ANSWERED.search(stderr)
        answered = int(m[1]) if m else -1
        return None if rc == 0 and answered == n else f"exit {rc}, {answered}/{n} answered"
    m = _AGENTS.search(stderr)
    online = int(m[2]) if m else -1
    return None if rc == 0 and online == n else f"exit {rc}, {online}/{n} online"


async def wait_for_registry(fleet: Fleet, n: int, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        records = await fleet.agents()
        online = sum(r.online for r in records)
        if online >= n:
            return
        if time.monotonic() > end:
            raise RuntimeError(f"registry shows {online} online agents, expected {n}")
        await asyncio.sleep(0.5)


def _where(filename: str, line: int, name: str) -> str:
    short = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", filename)
    short = short.replace(str(REPO_ROOT) + "/", "")
    return f"{short}:{line} {name}" if line else name


def profile_tables(stats: pstats.Stats, n: int, mode: str, top: int = 14) -> list[Table]:
    """Where one Fleet.ps() spends its time, from a cProfile run of the controller."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    entries = [
        (own, cumulative, calls, filename, _where(filename, line, name))
        for (filename, line, name), (_cc, calls, own, cumulative, _callers) in raw.items()
    ]
    waiting = sum(e[0] for e in entries if "poll" in e[4] and "epoll" in e[4])
    total = sum(e[0] for e in entries)
    own = Table(
        "fanout-profile-own",
        f"1e. Profile of one Fleet.ps() over {n:,} instant responders ({mode}): own time",
        ["function", "calls", "own time (ms)", "cumulative (ms)"],
    )
    for own_s, cumulative, calls, _file, where in sorted(entries, reverse=True):
        if len(own.rows) >= top:
            break
        if "epoll" in where:
            continue
        own.add(f"`{where}`", calls, ms(own_s), ms(cumulative))
    own.notes.append(
        f"cProfile of the controller process: {ms(total)} ms profiled, of which "
        f"{ms(waiting)} ms waiting in epoll (for the network and the other processes). "
        "cProfile slows Python calls down, so read the shares, not the absolute times."
    )
    shoal = Table(
        "fanout-profile-shoal",
        f"1f. Profile of one Fleet.ps() over {n:,} instant responders ({mode}): Shoal's code",
        ["function", "calls", "cumulative (ms)", "own time (ms)"],
    )
    ours = [
        e
        for e in entries
        if any(f"/{pkg}/" in e[3] for pkg in ("controller", "protocol")) and str(REPO_ROOT) in e[3]
    ]
    for own_s, cumulative, calls, _file, where in sorted(ours, key=lambda e: -e[1])[:top]:
        shoal.add(f"`{where}`", calls, ms(cumulative), ms(own_s))
    return [own, shoal]


def sim_args(url: str, workdir: Path, config: FanoutConfig, key: BenchKey | None) -> list[str]:
    args = [
        "--url",
        url,
        "--heartbeat-interval",
        str(config.heartbeat_interval),
        "--containers",
        str(config.containers),
        "--running",
        str(config.running),
        "--state-dir",
        str(workdir / "agent-state"),
    ]
    return args + (["--trust", str(key.trust_path)] if key is not None else [])


def make_fleet(url: str, prefix: str, config: FanoutConfig, key: BenchKey | None) -> Fleet:
    return Fleet(
        NatsOptions(servers=url, name="shoal-bench"),
        prefix=prefix,
        timeout=config.timeout,
        signer=key.signer if key is not None else None,
    )


async def run(config: FanoutConfig) -> list[Table]:
    workdir = short_tempdir("shoal-bench-fanout-")
    server = NatsServer(workdir / "nats", config=NATS_CONFIG)
    key = BenchKey.create(workdir / "keys") if config.signed else None
    results: list[SizeResult] = []
    ceiling: list[CeilingResult] = []
    profile: list[Table] = []
    try:
        server.start()
        fleet = make_fleet(server.url, PREFIX, config, key)
        sim = Workers(
            "bench.fleetsim",
            sim_args(server.url, workdir, config, key),
            config.workers,
            workdir,
            HOST_PREFIX,
        )
        try:
            async with fleet:
                await fleet.init_registry()
                await sim.start()
                for n in config.sizes:
                    log(f"fan-out: starting agents up to {n:,}")
                    added = n - sim.size
                    grow_seconds, failed = await sim.grow_to(n)
                    await wait_for_registry(fleet, n - failed, 120)
                    result = await measure_size(fleet, sim, server, workdir, key, config, n)
                    result.added, result.grow_seconds = added, grow_seconds
                    result.grow_failed = failed
                    results.append(result)
                    log(
                        f"fan-out {n:,}: started in {grow_seconds:.1f}s; Fleet.ps "
                        f"{median(result.ps_wall):.3f}s, lost {max(result.ps_missing, default=0)}, "
                        f"failed calls {len(result.failures)}"
                    )
        finally:
            log("fan-out: stopping the simulated fleet")
            await sim.stop()
        agent_logs = summarize_logs(sorted(workdir.glob("fleetsim-*.log")))
        ceiling, profile = await run_ceiling(server, workdir, config, key)
    finally:
        server.stop()
        remove_tree(workdir)
    tables = tables_for(results, ceiling, config)
    tables[1].notes += agent_logs
    return [*tables, *profile]


_LOG_NOISE = re.compile(r"^\S+ \S+ |\b(sim|ceil)-\d{5}\b|\d+(\.\d+)?")


def summarize_logs(paths: list[Path], top: int = 5) -> list[str]:
    """The simulated agents' warnings and errors (the workers log at WARNING)."""
    counts: dict[str, int] = {}
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                key = _LOG_NOISE.sub("#", line)[:160]
                counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ["Simulated agents' logs: no warnings or errors."]
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
    total = sum(counts.values())
    return [f"Simulated agents' logs: {total} warning/error lines; most frequent:"] + [
        f"{count}x `{text}`" for text, count in ranked
    ]


async def run_ceiling(
    server: NatsServer, workdir: Path, config: FanoutConfig, key: BenchKey | None
) -> tuple[list[CeilingResult], list[Table]]:
    """The controller alone: Fleet.ps() against instant responders (not agents).

    Signed and unsigned requests in the same run, interleaved (the responders check
    nothing, so both modes meet the same hosts), and ``shoal ps --json`` end to end.
    """
    results: list[CeilingResult] = []
    profile: list[Table] = []
    modes: dict[str, BenchKey | None] = {"signed": key} if key is not None else {}
    modes["unsigned"] = None
    fleets = {mode: make_fleet(server.url, CEILING_PREFIX, config, k) for mode, k in modes.items()}
    responder = Workers(
        "bench.responder",
        ["--url", server.url, "--prefix", CEILING_PREFIX],
        1,
        workdir,
        "ceil",
    )
    env = child_env(workdir)
    wait = str(int(config.timeout))
    shoal = [tool("shoal"), "--server", server.url, "--prefix", CEILING_PREFIX]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for fleet in fleets.values():
                await stack.enter_async_context(fleet)
            first = next(iter(fleets.values()))
            await first.init_registry()
            await responder.start()
            for n in config.sizes:
                await responder.grow_to(n)
                await wait_for_registry(first, n, 60)
                by_mode = {mode: CeilingResult(n, mode) for mode in fleets}
                for mode, fleet in fleets.items():
                    await guarded(by_mode[mode].failures, f"ceiling warm-up at {n:,}", fleet.ps())
                for _attempt in range(2 * config.repeats):
                    if all(len(r.wall) >= config.repeats for r in by_mode.values()):
                        break
                    for mode, fleet in fleets.items():
                        if len(by_mode[mode].wall) < config.repeats:
                            argv = [*shoal, *key_args(modes[mode]), "ps", "--json", "--timeout"]
                            await ceiling_run(by_mode[mode], fleet, [*argv, wait], env, config)
                for result in by_mode.values():
                    results.append(result)
                    log(f"ceiling {n:,} {result.mode}: Fleet.ps {median(result.wall):.3f}s")
                if not any(r.wall for r in by_mode.values()):
                    break
            if config.profile and results:
                profiler = cProfile.Profile()
                profiler.enable()
                await first.ps()
                profiler.disable()
                stats = pstats.Stats(profiler, stream=io.StringIO())
                mode = next(iter(fleets))
                profile = profile_tables(stats, results[-1].n, mode)
    finally:
        await responder.stop()
    return results, profile


def key_args(key: BenchKey | None) -> list[str]:
    return ["--key", str(key.seed_path)] if key is not None else []


async def ceiling_run(
    result: CeilingResult, fleet: Fleet, cli: list[str], env: dict[str, str], config: FanoutConfig
) -> None:
    """One Fleet.ps() against the responders, then (while runs are due) the command."""
    n, mode = result.n, result.mode
    c0, t0 = time.process_time(), time.perf_counter()
    ps = await guarded(result.failures, f"ceiling Fleet.ps() {mode} at {n:,}", fleet.ps())
    if ps is None:
        return
    result.wall.append(time.perf_counter() - t0)
    result.cpu.append(time.process_time() - c0)
    result.replies.append(len(ps.replies))
    result.missing.append(len(ps.missing) + (n - len(ps.targeted)))
    del ps
    if len(result.cli_json) < cli_runs(config, n):
        seconds, rc, stdout, stderr = await run_cli(cli, env)
        problem = _check_cli("shoal ps --json", n, rc, stdout, stderr)
        if problem is None:
            result.cli_json.append(seconds)
        else:
            result.cli_notes.append(f"`shoal ps --json` {mode} at {n:,}: {problem}")
            log(f"ceiling {n}: shoal ps --json {mode}: {problem}: {stderr[-300:]!r}")


async def measure_size(
    fleet: Fleet,
    sim: Workers,
    server: NatsServer,
    workdir: Path,
    key: BenchKey | None,
    config: FanoutConfig,
    n: int,
) -> SizeResult:
    # Idle cost of the simulated fleet (NATS pings every 2 s, heartbeats): CPU it
    # takes from the two cores the measurements share.
    cpu0, t0 = sim.cpu(), time.perf_counter()
    await asyncio.sleep(3)
    idle_cpu = (sim.cpu() - cpu0) / (time.perf_counter() - t0)
    result = SizeResult(
        n=n,
        added=0,
        grow_seconds=0,
        grow_failed=0,
        worker_rss=sum(rss_bytes(pid) for pid in sim.pids),
        worker_threads=sum(thread_count(pid) for pid in sim.pids),
        idle_cpu=idle_cpu,
    )
    shoal = [tool("shoal"), "--server", server.url, "--prefix", PREFIX]
    if key is not None:
        shoal += ["--key", str(key.seed_path)]
    wait = str(int(config.timeout))
    commands = {
        "shoal ps": [*shoal, "ps", "--timeout", wait],
        "shoal ps --json": [*shoal, "ps", "--json", "--timeout", wait],
        "shoal agents": [*shoal, "agents"],
    }
    env = child_env(workdir)
    server_pid = server.pid
    runs_of_cli = cli_runs(config, n)
    await guarded(result.failures, f"warm-up Fleet.ps() at {n:,}", fleet.ps())
    for _attempt in range(2 * config.repeats):
        if len(result.ps_wall) >= config.repeats:
            break
        t = time.perf_counter()
        records = await guarded(result.failures, f"Fleet.agents() at {n:,}", fleet.agents())
        if records is not None:
            result.agents_s.append(time.perf_counter() - t)

        fleet_cpu0, server_cpu0 = sim.cpu(), cpu_seconds(server_pid)
        c0, t = time.process_time(), time.perf_counter()
        ps = await guarded(result.failures, f"Fleet.ps() at {n:,}", fleet.ps())
        if ps is not None:
            result.ps_wall.append(time.perf_counter() - t)
            result.ps_cpu.append(time.process_time() - c0)
            result.fleet_cpu.append(sim.cpu() - fleet_cpu0)
            result.server_cpu.append(cpu_seconds(server_pid) - server_cpu0)
            result.ps_replies.append(len(ps.replies))
            result.ps_missing.append(len(ps.missing) + (n - len(ps.targeted)))
            result.ps_errors.append(len(ps.errors))
            if ps.errors:
                first = next(iter(ps.errors.items()))
                log(f"fan-out {n}: {len(ps.errors)} error replies, e.g. {first}")

        if min((len(v) for v in result.cli_ok.values()), default=0) < runs_of_cli:
            for name, argv in commands.items():
                seconds, rc, stdout, stderr = await run_cli(argv, env)
                problem = _check_cli(name, n, rc, stdout, stderr)
                result.cli_ok.setdefault(name, []).append(problem is None)
                if problem is None:
                    result.cli.setdefault(name, []).append(seconds)
                else:
                    result.cli_notes.append(f"`{name}` at {n:,}: {problem}")
                    log(f"fan-out {n}: {name}: {problem}: {stderr[-300:]!r}")
    return result


async def guarded(failures: list[str], what: str, call: Awaitable[T]) -> T | None:
    """Await a controller call; a failure is recorded (and reported), not fatal."""
    try:
        return await call
    except Exception as exc:
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        log(f"{what} failed: {type(exc).__name__}: {exc}")
        return None


def cli_runs(config: FanoutConfig, n: int) -> int:
    """Fewer CLI runs for big fleets: a table of 10,000 hosts takes minutes to render."""
    if n < 5000:
        return config.cli_repeats
    return min(config.cli_repeats, 2 if n < 10000 else 1)


def lost(n: int, replies: list[int], missing: list[int]) -> str:
    if not replies:
        return "- (no run completed)"
    return f"{max(n - min(replies), 0)} (missing {max(missing)})"


def failure_notes(failures: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure] = counts.get(failure, 0) + 1
    return [f"FAILED {count}x: {text}" for text, count in sorted(counts.items())][:6]


def tables_for(
    results: list[SizeResult], ceiling: list[CeilingResult], config: FanoutConfig
) -> list[Table]:
    mode = "signed requests, trust file" if config.signed else "unsigned (insecure mode)"
    lib = Table(
        "fanout",
        "1. Fan-out at scale: Fleet.ps() over the whole simulated fleet",
        [
            "agents",
            "start-up (s)",
            "Fleet.agents() (ms)",
            "Fleet.ps() wall (ms)",
            "runs (ms)",
            "controller CPU (ms)",
            "replies/s",
            "µs per host",
            "lost replies",
            "errors",
            "failed calls",
        ],
    )
    for r in results:
        wall = median(r.ps_wall)
        lib.add(
            f"{r.n:,}",
            f"{fmt(r.grow_seconds)} (+{r.added:,}, {fmt(r.added / r.grow_seconds)}/s)",
            ms(median(r.agents_s)),
            ms(wall),
            spread([w * 1000 for w in r.ps_wall]),
            ms(median(r.ps_cpu)),
            fmt(median([rep / w for rep, w in zip(r.ps_replies, r.ps_wall, strict=True)])),
            fmt(wall / r.n * 1e6),
            lost(r.n, r.ps_replies, r.ps_missing),
            str(max(r.ps_errors, default=0)),
            str(len(r.failures)),
        )
        if r.grow_failed:
            lib.notes.append(f"{r.grow_failed} agents failed to start at {r.n:,}")
    lib.notes += [
        f"Median of {config.repeats} runs after one warm-up; one nats-server; "
        f"{config.workers} worker processes of real agent runtimes with an in-memory "
        f"engine ({config.running} running of {config.containers} canned containers "
        f"per host); {mode}; heartbeat every {fmt(config.heartbeat_interval)} s.",
        "Wall time runs from the call to the complete result: registry read, request "
        "per host, every reply validated. Controller CPU is the CPU time of the "
        "controller process alone during that call.",
        "lost replies = agents minus replies in the worst run; missing = hosts the "
        "result names as not answering (must be 0). failed calls = calls that raised "
        "instead of returning a result (retried, up to twice the runs); their errors "
        "are listed below.",
        "Start-up: time to start the agents added at this size (connect, duplicate "
        "check, subscribe, first heartbeat), all workers in parallel.",
    ]
    where = Table(
        "fanout-cpu",
        "1b. Where the two cores go during one Fleet.ps() (medians)",
        [
            "agents",
            "controller CPU (ms)",
            "simulated agents CPU (ms)",
            "nats-server CPU (ms)",
            "idle fleet load (cores)",
            "worker RSS (MiB)",
            "KiB per simulated agent",
            "worker threads",
        ],
    )
    for r in results:
        where.add(
            f"{r.n:,}",
            ms(median(r.ps_cpu)),
            ms(median(r.fleet_cpu)),
            ms(median(r.server_cpu)),
            fmt(r.idle_cpu),
            fmt(r.worker_rss / 2**20),
            fmt(r.worker_rss / r.n / 1024),
            f"{r.worker_threads:,}",
        )
    where.notes += [
        "The simulated agents share this machine's two cores with the controller, so "
        "the wall time above includes their work; a real fleet does it on N machines.",
        "idle fleet load: CPU the simulated fleet uses while nobody asks anything (NATS "
        "client pings every 2 s per agent, heartbeats), measured over 3 s.",
    ]
    cli = Table(
        "fanout-cli",
        "1c. `shoal ps` and `shoal agents` end to end over the same fleet",
        [
            "agents",
            "shoal ps (s)",
            "vs Fleet.ps()",
            "shoal ps --json (s)",
            "vs Fleet.ps()",
            "shoal agents (s)",
            "vs Fleet.agents()",
            "complete",
        ],
    )
    for r in results:
        ps_lib, agents_lib = median(r.ps_wall), median(r.agents_s)
        table_s = median(r.cli.get("shoal ps", []))
        json_s = median(r.cli.get("shoal ps --json", []))
        agents_s = median(r.cli.get("shoal agents", []))
        ok = all(all(v) for v in r.cli_ok.values())
        cli.add(
            f"{r.n:,}",
            fmt(table_s),
            ratio(table_s, ps_lib),
            fmt(json_s),
            ratio(json_s, ps_lib),
            fmt(agents_s),
            ratio(agents_s, agents_lib),
            "yes" if ok else "NO",
        )
    cli.notes.append(
        f"Median of {config.cli_repeats} runs below 5,000 agents, of 2 below 10,000, "
        "a single run at 10,000 (to keep the suite short), interleaved with the "
        "library runs; each "
        "command is a new process (interpreter start-up, imports, connect, registry "
        "read, gather, render to a pipe). Ratios divide by the library call measured "
        "in the same run."
    )
    cli.notes += sorted({note for r in results for note in r.cli_notes})[:8]
    lib.notes += failure_notes([f for r in results for f in r.failures])
    by_n = {r.n: r for r in results}
    real_mode = "signed" if config.signed else "unsigned"
    top = Table(
        "fanout-ceiling",
        "1d. Controller ceiling: Fleet.ps() against instant responders (not agents)",
        [
            "hosts",
            "requests",
            "Fleet.ps() wall (ms)",
            "runs (ms)",
            "controller CPU (ms)",
            "replies/s",
            "µs per host",
            "lost replies",
            "failed calls",
            "shoal ps --json (s)",
            "vs real agents (same N)",
        ],
    )
    for c in ceiling:
        wall = median(c.wall)
        real = by_n.get(c.n)
        top.add(
            f"{c.n:,}",
            c.mode,
            ms(wall),
            spread([w * 1000 for w in c.wall]),
            ms(median(c.cpu)),
            fmt(median([rep / w for rep, w in zip(c.replies, c.wall, strict=True)])),
            fmt(wall / c.n * 1e6),
            lost(c.n, c.replies, c.missing),
            str(len(c.failures)),
            fmt(median(c.cli_json)),
            ratio(wall, median(real.ps_wall)) if real and c.mode == real_mode else "-",
        )
    top.notes += [
        "One process answers for every host at the wire level: canned heartbeats into "
        "the registry, and a canned ps reply (same containers as above) carrying the "
        "request's id, sent at once, signature not checked. It measures what the "
        "controller alone can aggregate on this machine, which the real-agent runs "
        "cannot show: there the simulated agents' own work shares the two cores.",
        f"Median of {config.repeats} runs after one warm-up, same nats-server; signed "
        "(a signature per host, as with a trust file) and unsigned (insecure agents) "
        "requests interleaved, run by run, so both see the same load.",
        "shoal ps --json: the whole command as a new process (start-up, imports, connect, "
        "registry read, gather, JSON to a pipe), run after a library call; median of "
        f"{config.cli_repeats} runs below 5,000 hosts, 2 below 10,000, 1 at 10,000.",
    ]
    top.notes += sorted({note for c in ceiling for note in c.cli_notes})[:6]
    top.notes += failure_notes([f for c in ceiling for f in c.failures])
    return [lib, where, cli, top]
