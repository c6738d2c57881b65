"""Benchmark 5: rollout overhead of a deploy to 3 real engines.

Target (issue #8): a deploy to 3 hosts with full parallelism takes at most 30 %
more than the slowest host's own pull-create-start-healthy time.

The baseline is what each host does alone, directly against its engine with the
Docker SDK (docker-py), one host after the other: pull the image from the local
registry (removed first, so the pull is real), create the container (network
``none``, the same health check), start it and poll until its health is
``healthy``. The slowest host's time counts, round by round. Beside it, the same
on the 3 hosts at once (threads), to show what sharing this machine's cores,
disk and registry costs before Shoal does anything.

Shoal: ``Fleet.deploy()`` of the same image to the 3 hosts (real ``shoal-agent``
processes, signed requests, trust file), parallelism 0 (all at once), no canary,
monitor 0, timed from the call to the rollout's last event; and the whole
``shoal deploy -f compose.yaml --parallel 0`` command as a new process. Before
every measurement the service is removed and the image deleted on every engine,
and rounds alternate v1/v2 of the image, so every run pulls, creates and starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import re
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import Table, child_env, fmt, log, median, run_timed, spread, tool
from bench.realstack import AgentProcess, ReadyWatcher, RealStack, wait_online
from shoal.controller.rollout import (
    HostFinished,
    HostProgress,
    RolloutFinished,
    RolloutReport,
    RolloutStarted,
)
from shoal.protocol import HealthSpec, RolloutConfig, ServiceSpec
from tests.stack import BUSYBOX_IMAGE, Registry, in_parallel, registry_available

if TYPE_CHECKING:
    import docker

    from shoal.controller.fleet import Fleet
    from tests.stack import DockerEngine

PREFIX = "benchroll"
SERVICE = "rollapp"
REPOSITORY = "shoal-bench/rollapp"
LABEL_KEY = "shoal-bench"
LABEL = f"{LABEL_KEY}=rollout"
"""On the images (so on every container made from them) and on the baseline's containers."""
HOSTS = 3
VERSIONS = ("v1", "v2")
HEALTH = HealthSpec(test=("CMD", "true"), interval=1.0, timeout=2.0, retries=2)
COMMAND = ("sleep", "3600")
POLL = 0.05
"""The baseline's health poll (the agent polls every 0.25 s)."""
TARGET = 0.30
HEALTH_DEADLINE = 60.0


@dataclass
class RolloutBenchConfig:
    repeats: int = 7
    payload_mib: int = 8
    """Size of the image's own layer (random bytes, so gzip cannot shrink it)."""
    cli: bool = True


@dataclass
class Run:
    """One measurement: wall seconds and the slowest host's phases (seconds)."""

    seconds: float
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    alone: list[Run] = field(default_factory=list)
    together: list[Run] = field(default_factory=list)
    fleet: list[Run] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    per_host_alone: dict[str, list[float]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- images


def _dockerfile(version: str, payload_mib: int) -> str:
    return (
        f"FROM {BUSYBOX_IMAGE}\n"
        f"RUN dd if=/dev/urandom of=/payload bs=1048576 count={payload_mib} 2>/dev/null\n"
        f"ENV APP_VERSION={version}\n"
        f"LABEL {LABEL}\n"
        "STOPSIGNAL SIGKILL\n"
        f"HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD {HEALTH.test[1]}\n"
        f"CMD {json.dumps(list(COMMAND))}\n"
    )


def build_and_push(engine: DockerEngine, registry: Registry, payload_mib: int) -> dict[str, str]:
    """``rollapp:v1`` and ``:v2`` built from the busybox base, pushed, removed locally."""
    refs: dict[str, str] = {}
    with contextlib.closing(engine.client(timeout=300)) as client:
        for version in VERSIONS:
            ref = registry.ref(REPOSITORY, version)
            client.images.build(
                fileobj=io.BytesIO(_dockerfile(version, payload_mib).encode()),
                tag=ref,
                rm=True,
                network_mode="none",
            )
            for line in client.api.push(ref, stream=True, decode=True):
                if "error" in line:
                    raise RuntimeError(f"push {ref}: {line['error']}")
            refs[version] = ref
        for ref in refs.values():
            client.images.remove(ref, force=True)
    return refs


def _spec(ref: str) -> ServiceSpec:
    return ServiceSpec(
        name=SERVICE,
        image=ref,
        command=COMMAND,
        healthcheck=HEALTH,
        network_mode="none",
        stop_signal="SIGKILL",
    )


def _compose(path: Path, ref: str) -> Path:
    """The same service as a compose file (JSON is YAML)."""
    document = {
        "services": {
            SERVICE: {
                "image": ref,
                "command": list(COMMAND),
                "network_mode": "none",
                "stop_signal": "SIGKILL",
                "healthcheck": {
                    "test": list(HEALTH.test),
                    "interval": "1s",
                    "timeout": "2s",
                    "retries": HEALTH.retries,
                },
                "deploy": {"update_config": {"parallelism": 0, "monitor": "0s"}},
            }
        }
    }
    path.write_text(json.dumps(document, indent=2))
    return path


# --------------------------------------------------------------------------- baseline


def direct_deploy(client: docker.DockerClient, ref: str, name: str) -> Run:
    """What the agent does for a new service, straight to the engine: pull, create,
    start, poll until healthy. Phases in seconds."""
    t0 = time.perf_counter()
    repository, _, tag = ref.rpartition(":")
    for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(f"pull {ref}: {event['error']}")
    client.api.inspect_image(ref)
    t_pull = time.perf_counter()
    host_config = client.api.create_host_config(network_mode="none")
    created = client.api.create_container(
        image=ref,
        command=list(COMMAND),
        labels={LABEL_KEY: "rollout"},
        host_config=host_config,
        healthcheck={
            "test": list(HEALTH.test),
            "interval": int(HEALTH.interval * 1e9),
            "timeout": int(HEALTH.timeout * 1e9),
            "retries": HEALTH.retries,
            "start_period": 0,
        },
        name=name,
        stop_signal="SIGKILL",
    )
    container_id = str(created["Id"])
    t_create = time.perf_counter()
    client.api.start(container_id)
    t_start = time.perf_counter()
    deadline = t_start + HEALTH_DEADLINE
    while True:
        state = client.api.inspect_container(container_id).get("State") or {}
        if not state.get("Running"):
            raise RuntimeError(f"{name} exited with {state.get('ExitCode')}")
        health = (state.get("Health") or {}).get("Status", "")
        if health == "healthy":
            noticed = time.time()
            break
        if health == "unhealthy":
            raise RuntimeError(f"{name} is unhealthy")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{name} not healthy within {HEALTH_DEADLINE:g}s")
        time.sleep(POLL)
    t_healthy = time.perf_counter()
    return Run(
        t_healthy - t0,
        {
            "pull": t_pull - t0,
            "create": t_create - t_pull,
            "start": t_start - t_create,
            "health": t_healthy - t_start,
            **health_times(client, container_id, noticed),
        },
    )


_FRACTION = re.compile(r"\.(\d{6})\d*")


def _wall(text: str) -> float:
    """An engine time stamp (RFC 3339, nanoseconds) as seconds since the epoch."""
    return dt.datetime.fromisoformat(_FRACTION.sub(r".\1", text).replace("Z", "+00:00")).timestamp()


def health_times(client: docker.DockerClient, container: str, noticed: float) -> dict[str, float]:
    """From the engine's own record: started to healthy (first passing check), and
    healthy to ``noticed`` (a wall-clock time: when the caller learnt it)."""
    state = client.api.inspect_container(container).get("State") or {}
    passed = [e for e in (state.get("Health") or {}).get("Log") or [] if e.get("ExitCode") == 0]
    if not passed or not state.get("StartedAt"):
        return {}
    healthy = _wall(passed[0]["End"])
    return {"engine_healthy": healthy - _wall(state["StartedAt"]), "lag": noticed - healthy}


# --------------------------------------------------------------------------- the benchmark


class RolloutBench:
    def __init__(
        self,
        stack: RealStack,
        engines: list[DockerEngine],
        refs: dict[str, str],
        fleet: Fleet,
        config: RolloutBenchConfig,
    ) -> None:
        self.stack = stack
        self.engines = engines
        self.refs = refs
        self.fleet = fleet
        self.config = config
        self.clients = {e.name: e.client(timeout=120) for e in engines}
        self.results = Results()
        self.compose = {
            v: _compose(stack.workdir / f"rollout-{v}.json", ref) for v, ref in refs.items()
        }
        self.env = child_env(stack.workdir)
        self.counter = 0

    def close(self) -> None:
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()

    # --- between measurements

    async def reset(self) -> None:
        """No service, no baseline container, no app image on any engine."""
        result = await self.fleet.remove_service(SERVICE)
        unexpected = {
            h: e.message for h, e in result.errors.items() if "not deployed" not in e.message
        }
        if unexpected or result.missing:
            self.results.problems.append(
                f"remove service: errors {unexpected}, missing {sorted(result.missing)}"
            )
        await asyncio.to_thread(in_parallel, list(self.clients.values()), self._wipe)

    def _wipe(self, client: docker.DockerClient) -> None:
        import docker.errors

        _wipe_labelled(client)
        for ref in self.refs.values():
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(ref, force=True)

    # --- the measurements

    def _name(self) -> str:
        self.counter += 1
        return f"rollout-direct-{self.counter}"

    async def alone(self, version: str) -> Run:
        """Each host by itself, one after the other; the slowest host's run."""
        runs: dict[str, Run] = {}
        for name, client in self.clients.items():
            runs[name] = await asyncio.to_thread(
                direct_deploy, client, self.refs[version], self._name()
            )
            self.results.per_host_alone.setdefault(name, []).append(runs[name].seconds)
        return max(runs.values(), key=lambda r: r.seconds)

    async def together(self, version: str) -> Run:
        """The 3 hosts at once (threads); wall time, and the slowest host's phases."""
        runs: list[Run] = []
        names = {n: self._name() for n in self.clients}

        def one(name: str) -> None:
            runs.append(direct_deploy(self.clients[name], self.refs[version], names[name]))

        t0 = time.perf_counter()
        await asyncio.to_thread(in_parallel, list(self.clients), one)
        seconds = time.perf_counter() - t0
        return Run(seconds, max(runs, key=lambda r: r.seconds).phases)

    async def deploy(self, version: str) -> Run:
        """Fleet.deploy to the 3 hosts at once, from the call to the last event."""
        report = RolloutReport()
        marks: dict[str, dict[str, float]] = {}
        answered: dict[str, float] = {}
        begun = 0.0
        t0 = time.perf_counter()
        events = self.fleet.deploy(
            _spec(self.refs[version]),
            config=RolloutConfig(parallelism="0", monitor=0.0),
            timeout=60.0,
            health_timeout=HEALTH_DEADLINE,
        )
        async with aclosing(events) as stream:
            async for event in stream:
                now = time.perf_counter() - t0
                report.add(event)
                if isinstance(event, RolloutStarted):
                    begun = now
                elif isinstance(event, HostProgress):
                    marks.setdefault(event.host, {}).setdefault(event.phase, now)
                elif isinstance(event, HostFinished):
                    marks.setdefault(event.host, {})["finished"] = now
                    answered[event.host] = time.time()
                elif isinstance(event, RolloutFinished):
                    pass
        seconds = time.perf_counter() - t0
        outcomes = sorted(report.outcomes.values())
        if report.verdict != "completed" or outcomes != ["created"] * HOSTS:
            self.results.problems.append(
                f"Fleet.deploy {version}: verdict {report.verdict}, outcomes {report.outcomes}, "
                f"errors {[e.message for e in report.errors.values()]}"
            )
        host = max(marks, key=lambda h: marks[h].get("finished", seconds), default="")
        phases = _agent_phases(marks.get(host, {}), begun, seconds)
        if host in answered:
            phases.update(await asyncio.to_thread(self._health_times, host, answered[host]))
        return Run(seconds, phases)

    def _health_times(self, host: str, noticed: float) -> dict[str, float]:
        client = self.clients[self.engines[int(host.rsplit("-", 1)[1])].name]
        found = client.containers.list(filters={"label": f"shoal.service={SERVICE}"})
        return health_times(client, found[0].id, noticed) if found else {}

    def cli(self, version: str) -> float:
        argv = [
            tool("shoal"),
            "--server",
            self.stack.nats.url,
            "--prefix",
            PREFIX,
            "--key",
            str(self.stack.key.seed_path),
            "deploy",
            "-f",
            str(self.compose[version]),
            SERVICE,
            "--parallel",
            "0",
            "--json",
        ]
        done = run_timed(argv, env=self.env, timeout=180)
        if done.returncode != 0:
            self.results.problems.append(
                f"shoal deploy {version}: exit {done.returncode}: {done.stderr[-300:]!r}"
            )
        else:
            document = json.loads(done.stdout)
            hosts = document.get("rollout", {}).get("hosts", {})
            if sorted(hosts.values()) != ["created"] * HOSTS:
                self.results.problems.append(f"shoal deploy {version}: outcomes {hosts}")
        return done.seconds

    async def round(self, index: int, record: bool) -> None:
        version = VERSIONS[index % len(VERSIONS)]
        names = ["alone", "together", "deploy"] + (["cli"] if self.config.cli else [])
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order round by round
            await self.reset()
            if name == "alone":
                run = await self.alone(version)
                if record:
                    self.results.alone.append(run)
            elif name == "together":
                run = await self.together(version)
                if record:
                    self.results.together.append(run)
            elif name == "deploy":
                run = await self.deploy(version)
                if record:
                    self.results.fleet.append(run)
            else:
                seconds = await asyncio.to_thread(self.cli, version)
                if record:
                    self.results.cli.append(seconds)
        if record:
            r = self.results
            log(
                f"rollout round {index + 1}/{self.config.repeats} ({version}): slowest host "
                f"alone {r.alone[-1].seconds:.2f}s, 3 at once {r.together[-1].seconds:.2f}s, "
                f"Fleet.deploy {r.fleet[-1].seconds:.2f}s"
                + (f", shoal deploy {r.cli[-1]:.2f}s" if r.cli else "")
            )


def _agent_phases(marks: dict[str, float], begun: float, total: float) -> dict[str, float]:
    """The slowest host's phases, from the controller's view of its progress messages."""
    pulling = marks.get("pulling", begun)
    creating = marks.get("creating", pulling)
    starting = marks.get("starting", creating)
    health = marks.get("health", starting)
    finished = marks.get("finished", total)
    return {
        "controller": begun,
        "request": pulling - begun,
        "pull": creating - pulling,
        "create": starting - creating,
        "start": health - starting,
        "health": finished - health,
        "finish": total - finished,
    }


async def run(stack: RealStack, config: RolloutBenchConfig) -> list[Table]:
    reason = registry_available()
    if reason is not None:
        log(f"rollout: skipped: {reason}")
        return [_skipped(reason)]
    engines = stack.ensure_engines(HOSTS)
    registry = Registry(stack.workdir / "registry")
    started: list[AgentProcess] = []
    bench: RolloutBench | None = None
    try:
        registry.start()
        t0 = time.perf_counter()
        refs = await asyncio.to_thread(build_and_push, engines[0], registry, config.payload_mib)
        log(f"rollout: built and pushed {', '.join(refs)} in {time.perf_counter() - t0:.1f}s")
        fleet = stack.fleet(PREFIX, timeout=60.0)
        async with fleet:
            await fleet.init_registry()
            async with ReadyWatcher(fleet.nc, PREFIX) as watcher:
                started = [stack.spawn_agent(engines[i], f"roll-{i}", PREFIX) for i in range(HOSTS)]
                await watcher.wait(started)
            await wait_online(fleet, HOSTS)
            bench = RolloutBench(stack, engines, refs, fleet, config)
            try:
                for index in range(len(VERSIONS)):  # warm-up: first pulls, page cache
                    await bench.round(index, record=False)
                for index in range(config.repeats):
                    await bench.round(index, record=True)
                await bench.reset()
            finally:
                bench.close()
    finally:
        stack.stop_agents(started)
        for engine in engines:
            with contextlib.suppress(Exception), contextlib.closing(engine.client()) as client:
                _wipe_labelled(client)
        registry.cleanup()
    assert bench is not None
    return tables_for(bench.results, config)


def _wipe_labelled(client: docker.DockerClient) -> None:
    import docker.errors

    for container in client.containers.list(all=True, filters={"label": LABEL}):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
    for image in client.images.list(filters={"label": LABEL}):
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image.id, force=True)


def _skipped(reason: str) -> Table:
    table = Table("rollout", "5. Rollout overhead", ["measure", "result"])
    table.add("deploy rollout overhead", f"not run: {reason}")
    return table


def _overhead(value: float, baseline: float) -> str:
    if not baseline or value != value:
        return "-"
    return f"{(value / baseline - 1) * 100:+.0f} %"


def tables_for(results: Results, config: RolloutBenchConfig) -> list[Table]:
    alone = median([r.seconds for r in results.alone])
    together = median([r.seconds for r in results.together])
    rows: list[tuple[str, list[float]]] = [
        (
            "slowest host alone: docker-py pull, create, start, healthy",
            [r.seconds for r in results.alone],
        ),
        (
            "the 3 hosts at once: docker-py, a thread per host",
            [r.seconds for r in results.together],
        ),
        (
            "`Fleet.deploy()` to 3 hosts, parallelism 0 (all at once)",
            [r.seconds for r in results.fleet],
        ),
    ]
    if results.cli:
        rows.append(("`shoal deploy -f compose.yaml --parallel 0` (new process)", results.cli))
    table = Table(
        "rollout",
        "5. Rollout overhead: a deploy to 3 real engines against the slowest host's own time",
        [
            "measure",
            "median (s)",
            "runs (s)",
            "vs slowest host alone",
            "overhead",
            "target (≤ +30 %)",
            "vs 3 at once (docker-py)",
        ],
    )
    for label, values in rows:
        value = median(values)
        is_baseline = values is rows[0][1]
        table.add(
            label,
            fmt(value),
            spread(values),
            f"{value / alone:.2f}x" if alone else "-",
            "-" if is_baseline else _overhead(value, alone),
            "-" if is_baseline else ("met" if value <= alone * (1 + TARGET) else "missed"),
            f"{value / together:.2f}x" if together else "-",
        )
    per_host = ", ".join(
        f"{name} {fmt(median(values))} s" for name, values in sorted(results.per_host_alone.items())
    )
    table.notes += [
        f"Median of {config.repeats} rounds after {len(VERSIONS)} warm-up rounds; in each round "
        "every measure runs once, in an order that rotates round by round, and the rounds "
        "alternate image v1/v2. Before every measure the service is removed and the image "
        "deleted on every engine, so every run is a real pull from the local registry, a "
        "create and a start (Shoal's outcome is `created` on every host, checked).",
        "The image: the busybox base (already on the engines) plus one layer of "
        f"{config.payload_mib} MiB "
        "of random bytes, `HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD true`; "
        "the container runs `sleep 3600` with network `none`. Docker 20.10 runs the first "
        "health check one interval (1 s) after the start, so about 1 s of every run is that "
        "wait, the same on both sides.",
        "Slowest host alone: the three hosts one after the other, each timed from the pull to "
        f"healthy (health polled every {POLL * 1000:.0f} ms); the round's slowest counts "
        f"(medians per host: {per_host}). That is the target's baseline: what the slowest "
        "host takes for itself on an idle machine.",
        "All three engines, the registry, nats-server, the agents and the controller share this "
        "machine's 2 cores and one disk, so 3 hosts at once compete for them (a real fleet "
        "pulls and starts on 3 machines). The docker-py row with a thread per host measures "
        "that contention without Shoal; the last column divides by it.",
        "Fleet.deploy: an already connected controller, timed from the call to the last event "
        "(`rollout_finished`): the registry read that resolves the hosts, the fleet-wide "
        "service lock taken and released in JetStream, one signed request to the 3 hosts, and "
        "on each agent the pull (with progress messages), the architecture check, create, "
        "start, the health wait (polled every 50 ms for 5 s, then every 0.25 s) and the "
        "service record written "
        "(fsync) before and after. Monitor 0: with a health check the agent answers as soon "
        "as the container is healthy (the monitor window only applies without one). "
        "`shoal deploy` adds the interpreter's start-up, imports, the compose file and "
        "rendering the JSON result (monitor 0 comes from the compose file's update_config).",
    ]
    table.notes += sorted(set(results.problems))[:10]
    return [table, phases_table(results)]


PHASES = (
    ("controller", "controller: resolve hosts, take the service lock"),
    ("request", "request to the agent's first progress message"),
    ("pull", "pull (and the image check)"),
    ("create", "create"),
    ("start", "start"),
    ("health", "until healthy (and the agent's answer)"),
    ("engine_healthy", "of which the engine's own start to healthy (its health log)"),
    ("lag", "of which healthy to noticed (docker-py) / answered (Shoal)"),
    ("finish", "after the host's answer: lock released, rollout ends"),
)


def phases_table(results: Results) -> Table:
    table = Table(
        "rollout-phases",
        "5b. Where a rollout's time goes: the slowest host's phases (medians, s)",
        ["phase", "slowest host alone (docker-py)", "3 at once (docker-py)", "Fleet.deploy()"],
    )

    def cell(runs: list[Run], key: str) -> str:
        values = [r.phases[key] for r in runs if key in r.phases]
        return fmt(median(values)) if values else "-"

    for key, label in PHASES:
        table.add(
            label, cell(results.alone, key), cell(results.together, key), cell(results.fleet, key)
        )
    table.add(
        "total (median of the runs' totals)",
        fmt(median([r.seconds for r in results.alone])),
        fmt(median([r.seconds for r in results.together])),
        fmt(median([r.seconds for r in results.fleet])),
    )
    table.notes += [
        "Shoal's phases are the controller's view of the slowest host's progress messages "
        "(`pulling`, `creating`, `starting`, `health`, then its answer), so each includes "
        "what the agent does around the engine call: 'pull' also holds the architecture "
        "check, the service's container listing and the pending record written with fsync; "
        "'create' the record written again; 'start' the first container inspect; 'until "
        "healthy' the health polling and the final records and reply. The docker-py phases "
        "are the calls themselves. Medians per phase do not add up to the median total."
    ]
    return table
