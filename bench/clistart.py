"""Benchmark 4: start-up of the ``shoal`` command.

``shoal --help`` and ``shoal ps`` against one local host (a real agent on a real
engine), beside the bare import floor of the CLI's dependencies
(``python -c "import nats, pydantic"``) and the import of the CLI module alone,
all in the same run and interleaved, so that a busy machine slows them alike.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from bench.common import Table, child_env, fmt, log, median, ms, ratio, run_timed, spread, tool
from bench.realstack import ReadyWatcher, RealStack, wait_online

PREFIX = "benchcli"


@dataclass
class CliConfig:
    repeats: int = 10


async def run(stack: RealStack, config: CliConfig) -> list[Table]:
    engine = stack.ensure_engines(1)[0]
    fleet = stack.fleet(PREFIX)
    async with fleet:
        await fleet.init_registry()
        async with ReadyWatcher(fleet.nc, PREFIX) as watcher:
            agent = stack.spawn_agent(engine, "cli-host", PREFIX)
            await watcher.wait([agent])
        await wait_online(fleet, 1)
    env = child_env(stack.workdir)
    shoal = tool("shoal")
    commands: dict[str, list[str]] = {
        'python -c "import nats, pydantic"': [sys.executable, "-c", "import nats, pydantic"],
        'python -c "import controller.cli"': [sys.executable, "-c", "import controller.cli"],
        "shoal --help": [shoal, "--help"],
        "shoal ps (1 host)": [
            shoal,
            "--server",
            stack.nats.url,
            "--prefix",
            PREFIX,
            "--key",
            str(stack.key.seed_path),
            "ps",
        ],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    problems: list[str] = []
    for argv in commands.values():  # warm-up: page cache, bytecode
        run_timed(argv, env=env)
    for _ in range(config.repeats):
        for name, argv in commands.items():
            done = run_timed(argv, env=env)
            times[name].append(done.seconds)
            if done.returncode != 0:
                problems.append(f"{name}: exit {done.returncode}: {done.stderr[-200:]!r}")
    stack.stop_agents([agent])
    log("cli: " + ", ".join(f"{name} {median(values):.3f}s" for name, values in times.items()))
    floor_name = next(iter(commands))
    floor = median(times[floor_name])
    table = Table(
        "cli",
        "4. CLI start-up",
        ["command", "median (ms)", "runs (ms)", "vs import floor", "above floor (ms)"],
    )
    for name, values in times.items():
        value = median(values)
        table.add(
            f"`{name}`",
            ms(value),
            spread([v * 1000 for v in values]),
            ratio(value, floor),
            "-" if name == floor_name else ms(value - floor),
        )
    table.notes += [
        f"Median of {config.repeats} runs after a warm-up, the commands interleaved. "
        "`shoal ps` connects, reads the registry, asks the host (a real agent on a "
        "real engine, signed request), renders the table to a pipe and exits.",
        f"Floor: the interpreter plus the two libraries every shoal command imports; "
        f"{fmt(floor * 1000)} ms here.",
    ]
    table.notes += sorted(set(problems))[:5]
    return [table]
