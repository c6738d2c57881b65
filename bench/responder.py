"""Instant responders: one process that answers for N hosts at the wire level. A SIMULATION.

Used only for the "controller ceiling" of the fan-out benchmark: how fast the
controller aggregates when every host answers at once and for free. It is NOT an
agent: it publishes canned heartbeats (one per host, into the registry stream)
and answers every ``ps`` request with a canned reply that carries the request's
id, without checking signatures or anything else. The agents' own cost is
measured with real agent runtimes in :mod:`bench.fleetsim`.

Driven like :mod:`bench.fleetsim`: ``{"cmd": "grow", "prefix": "ceil", "start": 0,
"count": N}`` and ``{"cmd": "stop"}`` as JSON lines on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import nats
from nats.aio.msg import Msg

from bench.common import raise_fd_limit
from bench.fleetsim import emit
from bench.simengine import SIM_VERSION, canned_containers
from shoal.protocol import (
    PROTOCOL_VERSION,
    AgentFacts,
    DockerFacts,
    PsResult,
    Reply,
    Subjects,
    utcnow,
)

ID_MARK = "@@ID@@"
HOST_MARK = "hostmark0"


def reply_template(containers: int, running: int) -> str:
    """A ps reply as JSON, with markers where the request id and host go."""
    listed = [c for c in canned_containers(HOST_MARK, containers, running) if c.state == "running"]
    reply = Reply(
        id=ID_MARK,
        host=HOST_MARK,
        ok=True,
        result=PsResult(containers=listed).model_dump(mode="json"),
        started_at=utcnow(),
        duration=0.0001,
    )
    return reply.model_dump_json()


def heartbeat(host_id: str) -> bytes:
    now = utcnow()
    facts = AgentFacts(
        host_id=host_id,
        instance="responder",
        labels={"bench": "ceiling"},
        arch="amd64",
        os="linux",
        kernel="sim",
        docker=DockerFacts(reachable=True, version=SIM_VERSION, api_version="1.41"),
        agent_version="0.0.0-responder",
        protocol_version=PROTOCOL_VERSION,
        started_at=now,
        sent_at=now,
        heartbeat_interval=3600,
    )
    return facts.model_dump_json().encode()


async def serve(args: argparse.Namespace) -> None:
    subjects = Subjects(args.prefix)
    template = reply_template(args.containers, args.running)
    nc = await nats.connect(args.url, name="shoal-bench-responder", pending_size=256 * 2**20)

    async def on_request(msg: Msg) -> None:
        host = msg.subject.split(".")[-2]
        request_id = json.loads(msg.data)["id"]
        body = template.replace(ID_MARK, request_id).replace(HOST_MARK, host)
        await nc.publish(msg.reply, body.encode())

    await nc.subscribe(
        f"{args.prefix}.host.*.ps",
        cb=on_request,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit("ready")
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "stop":
                break
            t0 = time.perf_counter()
            start, count = int(command["start"]), int(command["count"])
            for index in range(start, start + count):
                host = f"{command['prefix']}-{index:05d}"
                await nc.publish(subjects.heartbeat(host), heartbeat(host))
            await nc.flush()
            emit("grown", started=count, failed=0, errors=[], seconds=time.perf_counter() - t0)
    finally:
        await nc.drain()
        emit("stopped")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.responder")
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", default="ceiling")
    parser.add_argument("--containers", type=int, default=5)
    parser.add_argument("--running", type=int, default=3)
    args = parser.parse_args()
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
