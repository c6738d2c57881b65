"""Benchmark 2: ``shoal ps`` over 1, 3 and 10 real Docker engines.

Beside it, in the same run and interleaved with it, the baseline an operator
has without Shoal: a sequential loop of ``docker -H unix://… ps`` over the same
engines. Each engine runs a few busybox containers; each has a real
``shoal-agent`` process in front of it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from bench.common import Table, child_env, log, median, ms, ratio, run_timed, spread, tool
from bench.realstack import AgentProcess, ReadyWatcher, RealStack, wait_online

PREFIX = "benchreal"
_ANSWERED = re.compile(rb"(\d+)/(\d+) hosts answered ok")


@dataclass
class EnginesConfig:
    counts: list[int]
    repeats: int = 7


@dataclass
class CountResult:
    engines: int
    shoal: list[float] = field(default_factory=list)
    docker: list[float] = field(default_factory=list)
    library: list[float] = field(default_factory=list)
    shoal_rows: int = 0
    docker_rows: int = 0
    problems: list[str] = field(default_factory=list)


def _docker_loop(hosts: list[str], env: dict[str, str]) -> tuple[float, int, str | None]:
    """One ``docker -H … ps`` after the other; (seconds, containers listed, problem)."""
    t0 = time.perf_counter()
    rows = 0
    problem = None
    for host in hosts:
        done = run_timed(["docker", "-H", host, "ps"], env=env)
        if done.returncode != 0:
            problem = f"docker -H {host} ps: exit {done.returncode}: {done.stderr[-200:]!r}"
        rows += max(0, len(done.stdout.splitlines()) - 1)
    return time.perf_counter() - t0, rows, problem


async def run(stack: RealStack, config: EnginesConfig) -> list[Table]:
    engines = stack.ensure_engines(max(config.counts))
    env = child_env(stack.workdir, DOCKER_CONFIG=str(stack.workdir / "docker-config"))
    shoal = [
        tool("shoal"),
        "--server",
        stack.nats.url,
        "--prefix",
        PREFIX,
        "--key",
        str(stack.key.seed_path),
        "ps",
    ]
    results: list[CountResult] = []
    fleet = stack.fleet(PREFIX)
    started: list[AgentProcess] = []
    async with fleet:
        await fleet.init_registry()
        async with ReadyWatcher(fleet.nc, PREFIX) as watcher:
            for count in config.counts:
                new = [
                    stack.spawn_agent(engines[i], f"host-{i:02d}", PREFIX)
                    for i in range(len(started), count)
                ]
                await watcher.wait(new)
                started.extend(new)
                await wait_online(fleet, count)
                hosts = [e.host for e in engines[:count]]
                result = CountResult(count)
                # Warm-up of both sides (page cache, engines' first calls).
                run_timed(shoal, env=env)
                _docker_loop(hosts, env)
                for _ in range(config.repeats):
                    done = run_timed(shoal, env=env)
                    m = _ANSWERED.search(done.stderr)
                    if done.returncode != 0 or not m or int(m[1]) != count:
                        result.problems.append(
                            f"shoal ps over {count}: exit {done.returncode}, {done.stderr[-200:]!r}"
                        )
                    result.shoal.append(done.seconds)
                    result.shoal_rows = max(0, len(done.stdout.splitlines()) - 1)
                    seconds, rows, problem = _docker_loop(hosts, env)
                    result.docker.append(seconds)
                    result.docker_rows = rows
                    if problem:
                        result.problems.append(problem)
                    t0 = time.perf_counter()
                    ps = await fleet.ps()
                    result.library.append(time.perf_counter() - t0)
                    if len(ps.replies) != count:
                        result.problems.append(f"Fleet.ps over {count}: {len(ps.replies)} replies")
                results.append(result)
                log(
                    f"real engines {count}: shoal ps {median(result.shoal):.3f}s, "
                    f"docker loop {median(result.docker):.3f}s"
                )
    stack.stop_agents(started)
    return [table_for(results, config, stack.containers_per_engine)]


def table_for(results: list[CountResult], config: EnginesConfig, per_engine: int) -> Table:
    table = Table(
        "engines",
        "2. Real engines: `shoal ps` beside a sequential `docker -H … ps` loop",
        [
            "engines",
            "shoal ps (ms)",
            "runs (ms)",
            "docker ps loop (ms)",
            "runs (ms)",
            "shoal ps / docker loop",
            "Fleet.ps() (ms)",
            "Fleet.ps() / docker loop",
            "containers listed (shoal / docker)",
        ],
    )
    for r in results:
        shoal, docker, library = median(r.shoal), median(r.docker), median(r.library)
        table.add(
            r.engines,
            ms(shoal),
            spread([s * 1000 for s in r.shoal]),
            ms(docker),
            spread([s * 1000 for s in r.docker]),
            ratio(shoal, docker),
            ms(library),
            ratio(library, docker),
            f"{r.shoal_rows} / {r.docker_rows}",
        )
    table.notes += [
        f"Median of {config.repeats} runs after a warm-up, shoal and docker interleaved. "
        f"Each engine is a real dockerd 20.10 with {per_engine} running busybox "
        "containers and a real shoal-agent (signed requests, trust file) in front of it.",
        "`shoal ps` is a new process each run (Python start-up, imports, connect, "
        "registry read, gather, render); the docker CLI is a Go binary started once per "
        "engine. Fleet.ps() is the library call from an already-connected process.",
    ]
    table.notes += sorted({p for r in results for p in r.problems})[:10]
    if not results:
        table.notes.append("not run")
    return table
