"""Deploy a service to one canary host first, look at how it went, then decide.

    python examples/canary_rollout.py compose.yaml web --server nats://127.0.0.1:4222 \
        --selector role=web

The rollout comes from the compose file's ``deploy.update_config``; the script adds a
canary wave of one host. After the canary wave it checks the canary's result (and
could run any check of its own: an HTTP probe, a metrics query) and either lets the
rollout go on or stops it. Stopping is simply leaving the loop: closing the event
generator sends nothing more and releases the service's fleet-wide lock. A canary
that was updated is then rolled back (``Fleet.rollback`` on that host alone).

Exit status: 0 if every targeted host is on the new revision (or was unchanged), 1
otherwise, 4 if a host never answered, 3 if no host matched.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import aclosing
from pathlib import Path

from shoal.controller import (
    Fleet,
    HostFinished,
    HostProgress,
    RolloutReport,
    RolloutStarted,
    WaveFinished,
    WaveStarted,
)
from shoal.controller.compose import ComposeError, load_compose
from shoal.protocol import NatsOptions, Selector


def canary_is_healthy(event: HostFinished) -> bool:
    """The check that decides whether to go on. Replace with your own."""
    return event.outcome in ("created", "updated", "unchanged")


async def rollout(compose: Path, service: str, server: str, labels: list[str]) -> int:
    try:
        project = load_compose(compose, services=[service])
    except ComposeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    spec = project.services[0]
    config = project.update_config.get(service)
    report = RolloutReport()
    canary: list[HostFinished] = []
    wave = -1

    async with Fleet(NatsOptions(servers=server, name="canary-example")) as fleet:
        events = fleet.deploy(spec, selector=Selector.build(labels=labels), config=config, canary=1)
        async with aclosing(events):
            async for event in events:
                report.add(event)
                if isinstance(event, RolloutStarted):
                    print(f"plan for {event.service}: {event.waves}")
                elif isinstance(event, WaveStarted):
                    wave = event.index
                    print(f"wave {event.index}: {' '.join(event.hosts)}")
                elif isinstance(event, HostProgress):
                    print(f"  {event.host}: {event.message or event.phase}")
                elif isinstance(event, HostFinished):
                    print(f"  {event.host}: {event.outcome} (revision {event.revision})")
                    if wave == 0:
                        canary.append(event)
                elif isinstance(event, WaveFinished) and event.index == 0:
                    if not all(canary_is_healthy(e) for e in canary):
                        print("canary is not healthy: stopping the rollout here")
                        break  # nothing more is sent; the lock is released
                    print("canary is healthy: rolling out to the rest of the fleet")

        if report.verdict is None:  # stopped after the canary: put it back
            changed = tuple(e.host for e in canary if e.outcome == "updated")
            if changed:
                back = RolloutReport(success=frozenset({"rolled_back"}))
                async for event in fleet.rollback(service, selector=Selector(hosts=changed)):
                    back.add(event)
                report.outcomes.update(back.outcomes)

    print(f"verdict: {report.verdict or 'stopped after the canary'}")
    for host, outcome in sorted(report.outcomes.items()):
        print(f"  {host}: {outcome}")
    return int(report.exit_code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compose", type=Path)
    parser.add_argument("service")
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--selector", "-l", action="append", default=[])
    args = parser.parse_args()
    sys.exit(asyncio.run(rollout(args.compose, args.service, args.server, args.selector)))


if __name__ == "__main__":
    main()
