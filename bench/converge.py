"""Benchmark 6: the reconciler (``shoal serve``) idle over a big fleet, and converging a
host that comes back.

6a. **Idle CPU** (target: under 2 % of one core with 1,000 hosts). A real nats-server
with JetStream, the registry, one declaration selecting ``role=sim``, and
``bench/heartbeatsim.py`` publishing valid heartbeats for 1,000 simulated hosts
(labels ``role=sim``, every 5 s, spread evenly), each reporting the declared service
running with the declaration's spec hash: the fleet is converged. ``shoal serve`` runs
as its own process; after it took the lease and settled, its CPU time (utime + stime
from ``/proc/PID/stat``) is read over a window. The floor, in the same window: a
process that subscribes to the same heartbeats with nats-py and validates each with
``AgentFacts.model_validate_json``, nothing else. Measured twice: without
convergence records (the brief's setup) and with a ``converged`` record per host in
``SHOAL_CONVERGENCE``, as the reconciler leaves them once it has converged the fleet
itself. That ``shoal serve`` deployed nothing is checked in its log.

6b. **Reconnect to converged** (target: at most 2 s more than the host's own pull and
health time). One real engine, a real ``shoal-agent``, a local registry with the
rollout benchmark's image. With the agent stopped and ``shoal serve`` running, the
service is declared for that host; then the agent starts. t0 is its first heartbeat,
t1 the first poll (every 0.1 s) of ``Fleet.status()`` that shows the host converged.
The baseline, in the same round: the rollout benchmark's ``direct_deploy`` (docker-py
pull, create, start, healthy) on the same engine. Between measurements the service is
withdrawn (the reconciler removes it and forgets the declaration) and the image
deleted, so every round pulls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    Table,
    child_env,
    cpu_seconds,
    fmt,
    log,
    median,
    rss_bytes,
    spread,
    tool,
)
from bench.heartbeatsim import host_ids
from bench.realstack import AgentProcess, ReadyWatcher, RealStack, wait_online
from bench.rollout import COMMAND, HEALTH, LABEL, VERSIONS, build_and_push, direct_deploy
from shoal.controller.desired import Declaration, Record, record_key
from shoal.protocol import AgentFacts, Selector, ServiceSpec
from tests.stack import Registry, registry_available

if TYPE_CHECKING:
    import docker

    from shoal.controller.fleet import Fleet
    from shoal.controller.transport import Message

IDLE_PREFIX = "benchconv"
REJOIN_PREFIX = "benchrejoin"
SIM_SERVICE = "simapp"
SIM_LABEL = "role=sim"
SIM_INTERVAL = 5.0
SERVICE = "convapp"
CPU_TARGET = 2.0
"""Per cent of one core."""
OVERHEAD_TARGET = 2.0
"""Seconds above the host's own pull-create-start-healthy time."""
POLL = 0.1
DEPLOYING_LINE = "deploying to"
LEASE_LINE = "holds the reconciler lease"
MiB = 2**20


@dataclass
class ConvergeConfig:
    hosts: int = 1000
    window: float = 60.0
    """Seconds of the CPU window (6a)."""
    settle: float = 10.0
    """Seconds between the reconciler taking the lease (or a change) and a window."""
    rounds: int = 5
    payload_mib: int = 8


# --------------------------------------------------------------------------- processes


class Child:
    """A process of the benchmark's own (simulator, floor, ``shoal serve``), its output
    in a log file; stopped with SIGTERM by its pid, SIGKILL past the deadline."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            self.process: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the process wrote (other lines skipped)."""
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e.get("event") == name), None)

    async def wait_for(self, what: str, timeout: float) -> None:
        """Until the log has ``what`` (a JSON event name or a piece of text)."""
        end = time.monotonic() + timeout
        while True:
            if self.event(what) is not None or what in self.text():
                return
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.argv[0]} exited with {self.process.returncode} before {what!r}:\n"
                    + "\n".join(self.text().splitlines()[-15:])
                )
            if time.monotonic() > end:
                raise RuntimeError(f"no {what!r} from {self.argv[0]} after {timeout:.0f}s")
            await asyncio.sleep(0.05)

    def stop(self, deadline: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=10)


def serve_argv(stack: RealStack, prefix: str) -> list[str]:
    """``shoal serve`` as an operator runs it, signed with the benchmark's key."""
    return [
        tool("shoal"),
        "--server",
        stack.nats.url,
        "--prefix",
        prefix,
        "--key",
        str(stack.key.seed_path),
        "serve",
        "--name",
        "bench",
    ]


def deploy_lines(serve: Child) -> list[str]:
    return [line for line in serve.text().splitlines() if DEPLOYING_LINE in line]


# --------------------------------------------------------------------------- 6a. idle


@dataclass
class Window:
    """CPU seconds per process over one window, and what the floor read in it."""

    label: str
    seconds: float
    cpu: dict[str, float]
    heartbeats: int
    rss: dict[str, int] = field(default_factory=dict)
    deploys: int = 0
    """Rollouts ``shoal serve`` started during the window."""

    def percent(self, name: str) -> float:
        return self.cpu[name] / self.seconds * 100 if self.seconds else float("nan")


@dataclass
class IdleResults:
    windows: list[Window] = field(default_factory=list)
    converged: list[str] = field(default_factory=list)
    deploys: list[str] = field(default_factory=list)
    published: int = 0
    problems: list[str] = field(default_factory=list)


def sim_spec() -> ServiceSpec:
    """The declared service of the simulated fleet (never pulled: every host has it)."""
    return ServiceSpec(
        name=SIM_SERVICE,
        image="127.0.0.1:5000/shoal-bench/simapp:v1",
        command=COMMAND,
        healthcheck=HEALTH,
        network_mode="none",
        restart="unless-stopped",
    )


async def measure_window(label: str, seconds: float, pids: dict[str, int]) -> Window:
    """CPU time of each process over ``seconds`` (the caller counts the heartbeats)."""
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    window = time.perf_counter() - t0
    cpu = {name: cpu1[name] - cpu0[name] for name in pids}
    rss = {name: rss_bytes(pid) for name, pid in pids.items()}
    return Window(label, window, cpu, 0, rss)


async def idle(stack: RealStack, config: ConvergeConfig) -> IdleResults:
    results = IdleResults()
    stack.start_nats()
    env = child_env(stack.workdir)
    fleet = stack.fleet(IDLE_PREFIX, timeout=30.0)
    children: list[Child] = []
    try:
        async with fleet:
            await fleet.init_registry()
            declaration = Declaration(
                service=sim_spec(), selector=Selector.build(labels=[SIM_LABEL])
            )
            [(stored, _)] = await fleet.apply([declaration])
            logs = stack.workdir / "converge"
            sim = Child(
                [
                    sys.executable,
                    "-m",
                    "bench.heartbeatsim",
                    "publish",
                    "--url",
                    stack.nats.url,
                    "--prefix",
                    IDLE_PREFIX,
                    "--hosts",
                    str(config.hosts),
                    "--interval",
                    str(SIM_INTERVAL),
                    "--label",
                    SIM_LABEL,
                    "--service",
                    SIM_SERVICE,
                    "--spec-hash",
                    stored.spec_hash,
                ],
                logs / "heartbeatsim.log",
                env,
            )
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
                    IDLE_PREFIX,
                ],
                logs / "floor.log",
                env,
            )
            children.append(floor)
            await floor.wait_for("ready", timeout=30)
            serve = Child(serve_argv(stack, IDLE_PREFIX), logs / "serve-idle.log", env)
            children.append(serve)
            await serve.wait_for(LEASE_LINE, timeout=60)
            log(f"converge: shoal serve holds the lease; settling {config.settle:g}s")
            await asyncio.sleep(config.settle)
            results.converged.append(await _converged(fleet, config.hosts, results))
            pids = {
                "serve": serve.pid,
                "floor": floor.pid,
                "nats-server": stack.nats.pid,
                "simulator": sim.pid,
            }
            before = len(deploy_lines(serve))
            beats = BeatCounter(fleet)
            async with beats:
                window = await measure_window("no convergence records", config.window, pids)
            window.heartbeats = beats.count
            window.deploys = len(deploy_lines(serve)) - before
            results.windows.append(window)
            log(_window_line(window))

            store = fleet.desired_store()
            for host in host_ids(config.hosts):
                await store.write(
                    Record(
                        service=SIM_SERVICE,
                        host=host,
                        generation=stored.generation,
                        state="converged",
                    )
                )
            await asyncio.sleep(config.settle)
            before = len(deploy_lines(serve))
            beats = BeatCounter(fleet)
            async with beats:
                window = await measure_window(
                    f"{config.hosts:,} converged records", config.window, pids
                )
            window.heartbeats = beats.count
            window.deploys = len(deploy_lines(serve)) - before
            results.windows.append(window)
            log(_window_line(window))
            results.converged.append(await _converged(fleet, config.hosts, results))
            results.deploys = deploy_lines(serve)
            if serve.process.poll() is not None:
                results.problems.append(f"shoal serve exited with {serve.process.returncode}")
    finally:
        for child in reversed(children):
            child.stop()
    stopped = children[0].event("stopped") if children else None
    results.published = int(stopped.get("messages", 0)) if stopped else 0
    if len(children) > 1:
        done = children[1].event("stopped")
        if done is None or done.get("invalid"):
            results.problems.append(f"the floor process ended with {done}")
    return results


class BeatCounter:
    """Counts the fleet's heartbeats while open (to check the simulator's rate)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.count = 0

    async def __aenter__(self) -> BeatCounter:
        async def on_beat(msg: Message) -> None:
            self.count += 1

        self._sub = await self.fleet.nc.subscribe(self.fleet.subjects.heartbeat_all(), on_beat)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()


async def _converged(fleet: Fleet, hosts: int, results: IdleResults) -> str:
    """``Fleet.status()`` of the simulated fleet, as counts per state."""
    items = await fleet.status([SIM_SERVICE])
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item.state)] = counts.get(str(item.state), 0) + 1
    if counts.get("converged", 0) != hosts:
        results.problems.append(f"Fleet.status() of the simulated fleet: {counts}")
    return ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items())) or "no host"


def _window_line(window: Window) -> str:
    return (
        f"converge: {window.label}: shoal serve {window.percent('serve'):.2f} %, floor "
        f"{window.percent('floor'):.2f} % of one core over {window.seconds:.0f}s "
        f"({window.heartbeats / window.seconds:.0f} heartbeats/s)"
    )


# --------------------------------------------------------------------------- 6b. rejoin


@dataclass
class Round:
    baseline: float
    reconnect: float
    """t1 - t0: first heartbeat to Fleet.status() converged."""
    phases: dict[str, float] = field(default_factory=dict)
    deploys: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    """The reconciler's per-host outcome lines (``created``, ``unchanged``, ...)."""
    states: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        return self.reconnect - self.baseline


@dataclass
class RejoinResults:
    rounds: list[Round] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: str | None = None


def rejoin_spec(ref: str) -> ServiceSpec:
    return ServiceSpec(
        name=SERVICE,
        image=ref,
        command=COMMAND,
        healthcheck=HEALTH,
        network_mode="none",
        stop_signal="SIGKILL",
        restart="unless-stopped",
    )


class BeatWatch:
    """The heartbeats of one host: the first one, and the first showing a spec running."""

    def __init__(self, fleet: Fleet, host: str, spec_hash: str) -> None:
        self.fleet = fleet
        self.host = host
        self.spec_hash = spec_hash
        self.first: tuple[float, float] | None = None
        """(perf_counter, wall clock) of the first heartbeat."""
        self.running: tuple[float, float] | None = None

    async def __aenter__(self) -> BeatWatch:
        async def on_beat(msg: Message) -> None:
            marks = (time.perf_counter(), time.time())
            try:
                facts = AgentFacts.model_validate_json(msg.data)
            except ValueError:
                return
            if facts.status != "online":
                return
            if self.first is None:
                self.first = marks
            if self.running is None and any(
                s.name == SERVICE and s.spec_hash == self.spec_hash and s.state == "running"
                for s in facts.services
            ):
                self.running = marks

        subject = self.fleet.subjects.heartbeat(self.host)
        self._sub = await self.fleet.nc.subscribe(subject, on_beat)
        await self.fleet.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()


class RecordWatch:
    """Every convergence record written for one service on one host, as it is written.

    A core subscription on the key's ``$KV`` subject sees each put (a poll would miss
    records overwritten within its period); (time received, record) in order.
    """

    def __init__(self, fleet: Fleet, service: str, host: str) -> None:
        self.fleet = fleet
        self.subject = f"$KV.{fleet.desired_store().convergence_name}.{record_key(service, host)}"
        self.records: list[tuple[float, Record]] = []

    async def __aenter__(self) -> RecordWatch:
        async def on_put(msg: Message) -> None:
            with contextlib.suppress(ValueError):  # purges have no body
                self.records.append((time.time(), Record.model_validate_json(msg.data)))

        self._sub = await self.fleet.nc.subscribe(self.subject, on_put)
        await self.fleet.nc.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sub.unsubscribe()

    def first(self, state: str, generation: int) -> float | None:
        """The ``since`` of the first record in ``state`` for ``generation``."""
        for _, record in self.records:
            if record.state == state and record.generation == generation:
                return record.since.timestamp()
        return None

    def count(self, state: str) -> int:
        return sum(1 for _, r in self.records if r.state == state)


class Rejoin:
    """The rounds of 6b.

    Each Shoal measurement has a prefix and a host id of its own: its registry,
    buckets, ``shoal serve`` and agent state are new. A shared prefix fails within a few
    rounds: ``Bucket.entries()`` (in every ``Fleet.status()`` and every reconciler pass)
    lists keys with nats-py's ``kv.keys()``, which leaves an ephemeral consumer on the
    bucket's stream for 5 minutes, and nats-server refuses a stream's 1,001st consumer
    ("maximum consumers limit reached"); polling status every 0.1 s beside a reconciler
    that re-deploys in a loop gets there in about 4 rounds.
    """

    def __init__(
        self, stack: RealStack, engine_client: docker.DockerClient, refs: dict[str, str]
    ) -> None:
        self.stack = stack
        self.engine = stack.engines[0]
        self.client = engine_client
        self.refs = refs
        self.env = child_env(stack.workdir)
        self.counter = 0
        self.results = RejoinResults()

    async def start_agent(self, fleet: Fleet, host: str) -> AgentProcess:
        async with ReadyWatcher(fleet.nc, fleet.subjects.prefix) as watcher:
            agent = self.stack.spawn_agent(self.engine, host, fleet.subjects.prefix)
            await watcher.wait([agent])
        return agent

    def wipe(self) -> None:
        """No container of the image (Shoal's or the baseline's), no app image."""
        import docker.errors

        for container in self.client.containers.list(all=True, filters={"label": LABEL}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        for ref in self.refs.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                self.client.images.remove(ref, force=True)

    def baseline(self, version: str) -> float:
        self.counter += 1
        run = direct_deploy(self.client, self.refs[version], f"converge-direct-{self.counter}")
        self.wipe()
        return run.seconds

    async def reconnect(self, index: int, version: str) -> Round:
        """``shoal serve`` running, the host known and stopped: declare, start, time it."""
        prefix, host = f"{REJOIN_PREFIX}{index}", f"conv-{index}"
        fleet = self.stack.fleet(prefix, timeout=60.0)
        agent: AgentProcess | None = None
        serve: Child | None = None
        try:
            async with fleet:
                await fleet.init_registry()
                serve = Child(
                    serve_argv(self.stack, prefix),
                    self.stack.workdir / "converge" / f"serve-{prefix}.log",
                    self.env,
                )
                await serve.wait_for(LEASE_LINE, timeout=60)
                agent = await self.start_agent(fleet, host)  # the registry knows the host
                self.stack.stop_agents([agent])  # it says it is leaving: offline
                agent = None
                [(declaration, _)] = await fleet.apply(
                    [
                        Declaration(
                            service=rejoin_spec(self.refs[version]),
                            selector=Selector.build(hosts=[host]),
                        )
                    ]
                )
                await _wait_state(fleet, host, "pending", 30)
                lines_before = len(serve.text().splitlines())
                states: list[str] = []
                async with (
                    BeatWatch(fleet, host, declaration.spec_hash) as beats,
                    RecordWatch(fleet, SERVICE, host) as records,
                ):
                    agent = await self.start_agent(fleet, host)
                    end = time.monotonic() + 180
                    while True:
                        state = await _state(fleet, host)
                        polled = time.perf_counter(), time.time()
                        if not states or states[-1] != state:
                            states.append(state)
                        if state == "converged" and beats.first is not None:
                            break
                        if time.monotonic() > end:
                            raise RuntimeError(f"{host} not converged after 180s: {states}")
                        await asyncio.sleep(POLL)
                    assert beats.first is not None
                    t0, t0_wall = beats.first
                    t1, t1_wall = polled
                    # Let the reconciler act on the heartbeats that follow before
                    # counting its rollouts (one more would show here).
                    await asyncio.sleep(SIM_INTERVAL + 1)
                new_lines = serve.text().splitlines()[lines_before:]
        finally:
            if agent is not None:
                self.stack.stop_agents([agent])
            if serve is not None:
                serve.stop()
            await asyncio.to_thread(self.wipe)
        deploying = records.first("deploying", declaration.generation)
        recorded = records.first("converged", declaration.generation)
        phases: dict[str, float] = {}
        if deploying is not None:
            phases["reaction"] = deploying - t0_wall
        if deploying is not None and recorded is not None:
            phases["rollout"] = recorded - deploying
        if recorded is not None:
            phases["recorded"] = recorded - t0_wall
        if beats.running is not None:
            if recorded is not None:
                phases["beat"] = beats.running[1] - recorded
            phases["status"] = t1_wall - beats.running[1]
        outcomes: dict[str, int] = {}
        marker = f"{SERVICE} on {host}: "
        for line in new_lines:
            if marker in line:
                outcome = line.split(marker, 1)[1].split(" ", 1)[0].rstrip(";")
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return Round(
            baseline=0.0,
            reconnect=t1 - t0,
            phases=phases,
            deploys=sum(1 for line in new_lines if DEPLOYING_LINE in line),
            outcomes=outcomes,
            states=states,
        )

    async def round(self, index: int, record: bool) -> None:
        version = VERSIONS[index % len(VERSIONS)]
        if index % 2 == 0:  # alternate which goes first
            baseline = await asyncio.to_thread(self.baseline, version)
            measured = await self.reconnect(index, version)
        else:
            measured = await self.reconnect(index, version)
            baseline = await asyncio.to_thread(self.baseline, version)
        measured.baseline = baseline
        label = f"round {index}" if record else "warm-up round"
        log(
            f"converge {label} ({version}): baseline {baseline:.2f}s, reconnect to converged "
            f"{measured.reconnect:.2f}s, overhead {measured.overhead:+.2f}s, rollouts "
            f"{measured.deploys} {measured.outcomes}, states {' > '.join(measured.states)}; "
            + ", ".join(f"{k} {v:.2f}s" for k, v in measured.phases.items())
        )
        if record:
            self.results.rounds.append(measured)


async def _state(fleet: Fleet, host: str) -> str:
    items = await fleet.status([SERVICE])
    return next((str(c.state) for c in items if c.host == host), "absent")


async def _wait_state(fleet: Fleet, host: str, wanted: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while (state := await _state(fleet, host)) != wanted:
        if time.monotonic() > end:
            raise RuntimeError(f"{host} is {state}, not {wanted}, after {timeout:.0f}s")
        await asyncio.sleep(POLL)


async def rejoin(stack: RealStack, config: ConvergeConfig) -> RejoinResults:
    reason = registry_available()
    if reason is not None:
        log(f"converge: reconnect measurement skipped: {reason}")
        return RejoinResults(skipped=reason)
    engine = stack.ensure_engines(1)[0]
    registry = Registry(stack.workdir / "converge-registry")
    client = engine.client(timeout=120)
    bench: Rejoin | None = None
    try:
        registry.start()
        refs = await asyncio.to_thread(build_and_push, engine, registry, config.payload_mib)
        bench = Rejoin(stack, client, refs)
        await bench.round(0, record=False)  # warm-up: first pulls, page cache
        for index in range(1, config.rounds + 1):
            await bench.round(index, record=True)
    finally:
        if bench is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(bench.wipe)
        client.close()
        registry.cleanup()
    return bench.results


# --------------------------------------------------------------------------- tables


async def run(stack: RealStack, config: ConvergeConfig) -> list[Table]:
    idle_results = await idle(stack, config)
    rejoin_results = await rejoin(stack, config)
    return [idle_table(idle_results, config), rejoin_table(rejoin_results, config)]


def idle_table(results: IdleResults, config: ConvergeConfig) -> Table:
    table = Table(
        "converge-idle",
        f"6a. Reconciler CPU with {config.hosts:,} simulated hosts idle, against the floor "
        "of reading their heartbeats",
        [
            "measure",
            "`shoal serve` (% of one core)",
            "floor (% of one core)",
            "vs floor",
            "above floor (points)",
            "target (< 2 %)",
            "RSS serve / floor (MiB)",
            "heartbeats/s",
            "rollouts started",
        ],
    )
    for window in results.windows:
        serve, floor = window.percent("serve"), window.percent("floor")
        table.add(
            window.label,
            fmt(serve),
            fmt(floor),
            f"{serve / floor:.2f}x" if floor else "-",
            f"{serve - floor:+.2f}",
            "met" if serve < CPU_TARGET else "missed",
            f"{window.rss['serve'] / MiB:.1f} / {window.rss['floor'] / MiB:.1f}",
            fmt(window.heartbeats / window.seconds),
            str(window.deploys),
        )
    context = "; ".join(
        f"{w.label}: nats-server {fmt(w.percent('nats-server'))} %, simulator "
        f"{fmt(w.percent('simulator'))} %"
        for w in results.windows
    )
    table.notes += [
        f"{config.hosts:,} simulated hosts (`bench/heartbeatsim.py`, one process) publish "
        f"a valid `AgentFacts` heartbeat every {SIM_INTERVAL:g} s each, spread evenly "
        f"({config.hosts / SIM_INTERVAL:,.0f} a second), labels `{SIM_LABEL}`, each "
        f"reporting the declared service running and healthy with the declaration's spec "
        "hash. One declaration selects `role=sim`. `shoal serve` is the real command (its "
        "own process, signed with the benchmark's key), measured from `/proc/PID/stat` "
        f"(utime + stime) over {fmt(config.window)} s after it took the lease and "
        f"settled {fmt(config.settle)} s.",
        "Floor, in the same window: a process that subscribes to the same heartbeats with "
        "nats-py and validates each with `AgentFacts.model_validate_json`, nothing else.",
        "Without records: the declaration alone, as the brief sets it up. With records: a "
        "`converged` record per host in `SHOAL_CONVERGENCE`, as the reconciler leaves them "
        "after converging the fleet itself (the steady state); the leader reads them all "
        "when it takes the lease and every 60 s, and keeps its own copy between.",
        f"Deploys by `shoal serve` during the whole run: {len(results.deploys)} "
        f"(`{DEPLOYING_LINE}` lines in its log)"
        + (f": {results.deploys[0][:160]}" if results.deploys else "")
        + f". `Fleet.status()` before and after the windows: {' / '.join(results.converged)}.",
        f"Same windows, for context (not in the comparison): {context}.",
    ]
    table.notes += sorted(set(results.problems))[:5]
    return table


PHASES = (
    ("reaction", "first heartbeat to the reconciler's `deploying` record"),
    ("rollout", "`deploying` to `converged` record (the rollout: pull, create, start, healthy)"),
    ("beat", "`converged` record to the agent's next heartbeat showing the service"),
    ("status", "that heartbeat to `Fleet.status()` showing converged (polled every 0.1 s)"),
)


def rejoin_table(results: RejoinResults, config: ConvergeConfig) -> Table:
    title = "6b. From an agent's reconnect to its host converged, against the host's own time"
    table = Table("converge-rejoin", title, ["measure", "median (s)", "runs (s)", "target (≤ 2 s)"])
    if results.skipped is not None:
        table.add("reconnect to converged", f"not run: {results.skipped}", "-", "-")
        return table
    rounds = results.rounds
    baseline = [r.baseline for r in rounds]
    reconnect = [r.reconnect for r in rounds]
    overhead = [r.overhead for r in rounds]
    table.add(
        "host alone: docker-py pull, create, start, healthy",
        fmt(median(baseline)),
        spread(baseline),
        "-",
    )
    table.add(
        "first heartbeat to `Fleet.status()` converged (t1 - t0)",
        fmt(median(reconnect)),
        spread(reconnect),
        "-",
    )
    value = median(overhead)
    table.add(
        "**overhead: t1 - t0 - host alone**",
        fmt(value),
        spread(overhead),
        "met" if value <= OVERHEAD_TARGET else "missed",
    )
    for key, label in PHASES:
        values = [r.phases[key] for r in rounds if key in r.phases]
        table.add(f"of which: {label}", fmt(median(values)), spread(values), "-")
    recorded = [r.phases["recorded"] - r.baseline for r in rounds if "recorded" in r.phases]
    table.add(
        "first heartbeat to the reconciler's first `converged` record, minus host alone",
        fmt(median(recorded)),
        spread(recorded),
        ("met" if median(recorded) <= OVERHEAD_TARGET else "missed") if recorded else "-",
    )
    deploys = [r.deploys for r in rounds]
    outcomes: dict[str, int] = {}
    for r in rounds:
        for outcome, n in r.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
    states = sorted({" > ".join(r.states) for r in rounds})
    table.notes += [
        f"Median of {len(rounds)} rounds after a warm-up round; each round measures the "
        "baseline and Shoal once (which goes first alternates) and alternates image v1/v2. "
        "After each, the containers and the image are removed from the engine, so every run "
        "pulls from the local registry. Each Shoal run has a subject prefix and a host id of "
        "its own (new registry, buckets and agent state).",
        f"The image and health check of benchmark 5 (busybox plus {config.payload_mib} MiB "
        "of random bytes, `HEALTHCHECK --interval=1s`, `sleep 3600`, network `none`). The "
        "declaration selects the host by id; the default rollout policy (as `shoal apply` "
        "stores it for a compose file without `update_config`).",
        "Shoal: `shoal serve` started (its own process) and holding the lease; the host's "
        "agent (a real `shoal-agent`, default heartbeat interval 5 s) started once and "
        "stopped, so the registry knows the host as offline (`pending`); the service "
        "declared for it; then the agent started again. t0: its first heartbeat (sent just "
        "before its `started` event); t1: the first `Fleet.status()` poll (every 0.1 s) "
        "that shows it converged.",
        "Phases from wall-clock stamps: the records' `since` (written by `shoal serve`), "
        "the heartbeats as this process received them. `Fleet.status()` says converged "
        "once a heartbeat shows the service running with the declared spec hash (or a "
        "`converged` record newer than the last heartbeat); the agent sends one every 5 s "
        "and one right after a deploy.",
        f"Rollouts `shoal serve` started per round, where one is needed (`{DEPLOYING_LINE}` "
        f"lines in its log, counted until {SIM_INTERVAL + 1:g} s after t1): "
        f"{', '.join(map(str, deploys))}; "
        "its outcome lines for the host over all rounds: "
        + (", ".join(f"{o} {n}" for o, n in sorted(outcomes.items())) or "none")
        + f". `Fleet.status()` states seen per round: {'; '.join(states)} ('absent': "
        "a poll that listed nothing for the host).",
    ]
    table.notes += sorted(set(results.problems))[:5]
    return table
