"""``python -m bench``: run Shoal's benchmark suite, print the tables, write the docs."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench import clistart, converge, dashboard, engines, fanout, footprint, report, rollout
from bench.common import (
    Table,
    load_average,
    log,
    machine_description,
    now_utc,
    raise_fd_limit,
    run_timed,
    tool,
)
from bench.realstack import RealStack

BENCHMARKS = ("fanout", "engines", "footprint", "cli", "rollout", "converge", "dashboard")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def _ints(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Shoal's benchmark suite. Prints a table per benchmark and, for a full "
        "run, writes them with the machine's description to docs/benchmarks.md.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: small fleets, few repeats, no write"
    )
    parser.add_argument(
        "--only", type=_names, default=None, help=f"comma-separated subset of {BENCHMARKS}"
    )
    parser.add_argument("--skip", type=_names, default=[], help="benchmarks to leave out")
    parser.add_argument("--sizes", type=_ints, default=None, help="fan-out fleet sizes")
    parser.add_argument("--workers", type=int, default=None, help="fan-out worker processes")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs per measurement (converge: rounds; dashboard: changes of each kind)",
    )
    parser.add_argument(
        "--engines", type=_ints, default=None, help="real engine counts (default 1,3,10)"
    )
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=None,
        help="idle window of the agent (footprint), of the reconciler (converge) and of "
        "the dashboard's CPU windows (dashboard); default 60",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="fan-out with insecure agents and unsigned requests (default: signed; the "
        "controller ceiling measures both either way)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the cProfile run of Fleet.ps"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results file")
    write = parser.add_mutually_exclusive_group()
    write.add_argument("--write", dest="write", action="store_true", default=None)
    write.add_argument("--no-write", dest="write", action="store_false")
    return parser.parse_args(argv)


def preflight() -> str | None:
    """Why the suite cannot run (the commands it measures do not start), or None."""
    checks = [
        [sys.executable, "-c", "import shoal.controller.cli, shoal.agent.cli, bench.fleetsim"],
        [tool("shoal"), "--help"],
        [tool("shoal-agent"), "--help"],
    ]
    for argv in checks:
        done = run_timed(argv, timeout=60)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
            return f"preflight failed: {shlex.join(argv)}: exit {done.returncode}\n" + "\n".join(
                tail
            )
    return None


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # run the cleanups in the finally blocks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    selected = [b for b in (args.only or BENCHMARKS) if b not in args.skip]
    write = args.write if args.write is not None else not quick
    repeats = args.repeats
    signal.signal(signal.SIGTERM, _terminate)
    raise_fd_limit()

    fan = fanout.FanoutConfig(
        sizes=args.sizes or ([50, 200] if quick else [100, 1000, 5000, 10000]),
        workers=args.workers or (2 if quick else 4),
        repeats=repeats or (3 if quick else 5),
        cli_repeats=min(repeats or 3, 3) if not quick else 1,
        profile=not args.no_profile and not quick,
        signed=not args.unsigned,
    )
    eng = engines.EnginesConfig(
        counts=args.engines or ([1, 3] if quick else [1, 3, 10]),
        repeats=repeats or (3 if quick else 7),
    )
    foot = footprint.FootprintConfig(
        starts=3 if quick else 5,
        idle_agents=2 if quick else 3,
        idle_seconds=args.idle_seconds or (10.0 if quick else 60.0),
        settle_seconds=2.0 if quick else 5.0,
    )
    cli = clistart.CliConfig(repeats=repeats or (3 if quick else 10))
    roll = rollout.RolloutBenchConfig(
        repeats=repeats or (2 if quick else 7),
        payload_mib=4 if quick else 8,
        cli=True,
    )
    conv = converge.ConvergeConfig(
        hosts=1000,
        window=args.idle_seconds or (10.0 if quick else 60.0),
        settle=5.0 if quick else 10.0,
        rounds=repeats or (2 if quick else 5),
        payload_mib=4 if quick else 8,
    )
    dash = dashboard.DashboardConfig(
        hosts=1000,
        window=args.idle_seconds or (5.0 if quick else 60.0),
        settle=2.0 if quick else 10.0,
        repeats=repeats or (2 if quick else 7),
    )

    problem = preflight()
    if problem is not None:
        log(problem)
        return 1
    started = time.perf_counter()
    load_before = load_average()
    machine = machine_description()
    sections: dict[str, list[Table]] = {}
    dates: dict[str, str] = {}
    try:
        if "fanout" in selected:
            sections["fanout"] = asyncio.run(fanout.run(fan))
            dates["fanout"] = now_utc()
        real = [
            b
            for b in ("engines", "footprint", "cli", "rollout", "converge", "dashboard")
            if b in selected
        ]
        if real:
            reason = RealStack.unavailable()
            if reason is not None:  # the dashboard needs nats-server only
                engines_needed = [b for b in real if b != "dashboard"]
                if engines_needed:
                    log(f"skipping {', '.join(engines_needed)}: {reason}")
                real = [b for b in real if b == "dashboard"]
            if real:
                stack = RealStack()
                try:
                    if "engines" in real:
                        sections["engines"] = asyncio.run(engines.run(stack, eng))
                        dates["engines"] = now_utc()
                    if "footprint" in real:
                        sections["footprint"] = asyncio.run(footprint.run(stack, foot))
                        dates["footprint"] = now_utc()
                    if "cli" in real:
                        sections["cli"] = asyncio.run(clistart.run(stack, cli))
                        dates["cli"] = now_utc()
                    if "rollout" in real:
                        sections["rollout"] = asyncio.run(rollout.run(stack, roll))
                        dates["rollout"] = now_utc()
                    if "converge" in real:
                        sections["converge"] = asyncio.run(converge.run(stack, conv))
                        dates["converge"] = now_utc()
                    if "dashboard" in real:
                        sections["dashboard"] = asyncio.run(dashboard.run(stack, dash))
                        dates["dashboard"] = now_utc()
                finally:
                    log("stopping agents, engines and nats-server")
                    stack.cleanup()
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130

    elapsed = time.perf_counter() - started
    for tables in sections.values():
        for table in tables:
            print(table.text() + "\n")
    log(f"done in {elapsed / 60:.1f} min")

    if write:
        command = "python -m bench" + (" " + shlex.join(argv or sys.argv[1:])).rstrip()
        blocks: dict[str, str] = {
            "run": "\n".join(
                [
                    "## Last run",
                    "",
                    f"- Date: {now_utc()}",
                    f"- Command: `{command.strip()}`",
                    f"- Benchmarks: {', '.join(sections) or 'none'}; took {elapsed / 60:.1f} min",
                    f"- Load average (1, 5, 15 min) before: {load_before}; "
                    f"after: {load_average()} (other work shares this machine)",
                ]
            ),
            "machine": report.machine_markdown(machine),
        }
        for key, tables in sections.items():
            header = f"_Measured {dates[key]}._"
            blocks[key] = report.section_markdown(key, tables, header)
        report.write(args.output, blocks)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
