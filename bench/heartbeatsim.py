"""Heartbeats of a simulated fleet, and the floor cost of reading them (benchmarks 6, 7).

Run by the converge and dashboard benchmarks as a process of its own, in one of two
modes:

* ``python -m bench.heartbeatsim publish --url URL --prefix P --hosts 1000 ...``
  publishes a valid :class:`protocol.AgentFacts` heartbeat for each of ``--hosts``
  simulated hosts (``sim-00000`` …) on ``Subjects(P).heartbeat(host)``, each host once
  per ``--interval`` seconds, the hosts spread evenly over the interval (as a fleet
  whose agents started at random times). Every host reports one service
  (``--service``) running and healthy with ``--spec-hash``: converged; with
  ``--containers N`` each also reports N containers. It answers nothing: no agent
  runs here, only its heartbeats. With ``--control SUBJECT`` it takes requests there
  that change one host (the dashboard benchmark's state changes):
  ``{"host": H, "containers": N}``; ``{"host": H, "status": "leaving"}``, the
  heartbeat of an agent that stops, after which the host is silent;
  ``{"host": H, "status": "online"}``, back. The host's new heartbeat goes out at
  once; the reply is ``{"published": T}``, the wall clock (``time.time()``) just
  before it.
* ``python -m bench.heartbeatsim listen --url URL --prefix P`` subscribes to the
  fleet's heartbeats with nats-py and validates each with
  ``AgentFacts.model_validate_json``, nothing else: the least any process that
  follows the fleet's heartbeats must spend.

Both write JSON lines on stdout: ``{"event": "ready"}`` once connected (``publish``
adds ``{"event": "cycled"}`` when every host has beaten once) and, when stopped by
SIGTERM or SIGINT, ``{"event": "stopped", "messages": N, ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys
import time
import uuid
from typing import Any, Literal

import nats
from nats.aio.msg import Msg

from shoal.protocol import (
    PROTOCOL_VERSION,
    AgentFacts,
    DockerFacts,
    ServiceBeat,
    Subjects,
)

SENTINEL = dt.datetime(2000, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
"""``sent_at`` in the heartbeat templates, replaced by the time of each send."""


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def host_ids(count: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(count)]


def heartbeat_template(
    host_id: str,
    *,
    labels: dict[str, str],
    interval: float,
    service: str,
    spec_hash: str,
    revision: int,
    started_at: dt.datetime,
    instance: str | None = None,
    containers: int | None = None,
    status: Literal["online", "leaving"] = "online",
) -> tuple[bytes, bytes]:
    """The host's heartbeat as JSON, split around ``sent_at`` (filled in at each send)."""
    facts = AgentFacts(
        host_id=host_id,
        instance=instance or uuid.uuid4().hex,
        status=status,
        labels=labels,
        arch="amd64",
        os="linux",
        kernel="6.1.0-sim",
        hostname=host_id,
        docker=DockerFacts(reachable=True, version="20.10.24", api_version="1.41"),
        agent_version="0.1.0-bench",
        protocol_version=PROTOCOL_VERSION,
        started_at=started_at,
        sent_at=SENTINEL,
        heartbeat_interval=interval,
        containers=containers,
        services=[
            ServiceBeat(
                name=service,
                revision=revision,
                spec_hash=spec_hash,
                state="running",
                health="healthy",
            )
        ],
    )
    raw = facts.model_dump_json().encode()
    marker = b'"sent_at":' + json.dumps(SENTINEL.isoformat().replace("+00:00", "Z")).encode()
    head, found, tail = raw.partition(marker)
    if not found:
        raise RuntimeError(f"sent_at not found in the heartbeat template: {raw[:200]!r}")
    return head + b'"sent_at":"', b'"' + tail


def stamp(template: tuple[bytes, bytes]) -> bytes:
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return template[0] + now.encode() + template[1]


class Hosts:
    """The simulated hosts' heartbeat templates, and the changes the control asks for."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.subjects = Subjects(args.prefix)
        self.labels = dict(part.split("=", 1) for part in args.label)
        self.started_at = dt.datetime.now(dt.UTC)
        self.ids = host_ids(args.hosts)
        self.instances = {host: uuid.uuid4().hex for host in self.ids}
        self.containers: dict[str, int | None] = dict.fromkeys(self.ids, args.containers)
        self.gone: set[str] = set()
        """Hosts that sent their ``leaving`` heartbeat: silent until they come back."""
        self.templates = [(self.subjects.heartbeat(h), self.template(h)) for h in self.ids]
        self.index = {host: i for i, host in enumerate(self.ids)}

    def template(
        self, host: str, status: Literal["online", "leaving"] = "online"
    ) -> tuple[bytes, bytes]:
        return heartbeat_template(
            host,
            labels=self.labels,
            interval=self.args.interval,
            service=self.args.service,
            spec_hash=self.args.spec_hash,
            revision=self.args.revision,
            started_at=self.started_at,
            instance=self.instances[host],
            containers=self.containers[host],
            status=status,
        )

    def change(self, request: dict[str, Any]) -> tuple[str, tuple[bytes, bytes]]:
        """Apply a control request; the host's subject and its heartbeat to send now."""
        host = str(request["host"])
        if host not in self.index:
            raise ValueError(f"no simulated host {host!r}")
        if "containers" in request:
            self.containers[host] = int(request["containers"])
        status = request.get("status", "online")
        if status == "leaving":
            template = self.template(host, "leaving")
        elif status == "online":
            template = self.template(host, "online")
        else:
            raise ValueError(f"status {status!r}: online or leaving")
        if status == "leaving":
            self.gone.add(host)
        else:
            self.gone.discard(host)
            self.templates[self.index[host]] = (self.templates[self.index[host]][0], template)
        return self.subjects.heartbeat(host), template


async def publish(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    hosts = Hosts(args)
    templates = hosts.templates
    check = AgentFacts.model_validate_json(stamp(templates[0][1]))  # the wire format holds
    assert check.services[0].spec_hash == args.spec_hash
    nc = await nats.connect(args.url, name="shoal-bench-heartbeats", max_reconnect_attempts=-1)
    changes = 0

    async def on_control(msg: Msg) -> None:
        nonlocal changes
        try:
            subject, template = hosts.change(json.loads(msg.data))
        except (ValueError, KeyError, TypeError) as exc:
            await msg.respond(json.dumps({"error": str(exc)}).encode())
            return
        published = time.time()
        await nc.publish(subject, stamp(template))
        await nc.flush()
        changes += 1
        await msg.respond(json.dumps({"published": published}).encode())

    if args.control:
        await nc.subscribe(args.control, cb=on_control)
        await nc.flush()
    emit("ready", hosts=len(templates))
    sent = skipped = 0
    step = args.interval / len(templates)
    t0 = time.monotonic()
    cycled = False
    try:
        while not stop.is_set():
            now = time.monotonic()
            due = int((now - t0) / step) + 1  # the beats due by now, counted from t0
            while sent < due:
                subject, template = templates[sent % len(templates)]
                if hosts.gone and hosts.ids[sent % len(templates)] in hosts.gone:
                    skipped += 1  # a host that left sends nothing
                else:
                    await nc.publish(subject, stamp(template))
                sent += 1
            if not cycled and sent >= len(templates):
                await nc.flush()
                cycled = True
                emit("cycled", seconds=time.monotonic() - t0)
            # Sleep until the next beat is due, but at least about one tick: the beats
            # due meanwhile go out together (evenly spread to within a tick).
            after = time.monotonic()
            wait = max(t0 + due * step - after, args.tick - (after - now), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    finally:
        await nc.drain()
    return {
        "messages": sent - skipped + changes,
        "changes": changes,
        "seconds": time.monotonic() - t0,
    }


async def listen(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    counts = {"messages": 0, "invalid": 0}
    hosts: set[str] = set()

    async def on_beat(msg: Msg) -> None:
        try:
            facts = AgentFacts.model_validate_json(msg.data)
        except ValueError:
            counts["invalid"] += 1
            return
        counts["messages"] += 1
        hosts.add(facts.host_id)

    nc = await nats.connect(args.url, name="shoal-bench-listener", max_reconnect_attempts=-1)
    sub = await nc.subscribe(Subjects(args.prefix).heartbeat_all(), cb=on_beat)
    await nc.flush()
    emit("ready")
    try:
        await stop.wait()
    finally:
        await sub.unsubscribe()
        await nc.drain()
    return {**counts, "hosts": len(hosts)}


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.mode == "publish":
        result = await publish(args, stop)
    else:
        result = await listen(args, stop)
    emit("stopped", **result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.heartbeatsim")
    parser.add_argument("mode", choices=("publish", "listen"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0, help="heartbeat interval (s)")
    parser.add_argument(
        "--tick", type=float, default=0.02, help="publish the beats due every TICK seconds"
    )
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--service", default="simapp")
    parser.add_argument("--spec-hash", default="")
    parser.add_argument("--revision", type=int, default=1)
    parser.add_argument("--containers", type=int, default=None, help="containers each host reports")
    parser.add_argument(
        "--control", default=None, metavar="SUBJECT", help="take state changes here"
    )
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
