"""Prometheus metrics of the agent, served over plain HTTP by a tiny asyncio server.

Only the standard library: the text exposition format (version 0.0.4) is simple
enough, and an agent on a small board should not need another dependency.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shoal.protocol.errors import ShoalError

log = logging.getLogger("shoal.agent")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
READ_TIMEOUT = 5.0
MAX_REQUEST_HEAD = 8192


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        key = tuple(label_values)
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self.values.get(tuple(label_values), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        if not self.labels and not self.values:
            lines.append(f"{self.name} 0")
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {_number(value)}")
        return lines


@dataclass
class Gauge:
    """A gauge read when the metrics are scraped."""

    name: str
    help: str
    read: Callable[[], float]

    def render(self) -> list[str]:
        try:
            value = float(self.read())
        except Exception:  # a broken reader must not break the scrape
            log.exception("metric %s could not be read", self.name)
            value = math.nan
        return [
            f"# HELP {self.name} {self.help}",
            f"# TYPE {self.name} gauge",
            f"{self.name} {_number(value) if not math.isnan(value) else 'NaN'}",
        ]


@dataclass
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = DURATION_BUCKETS
    counts: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=dict)

    def observe(self, value: float, *label_values: str) -> None:
        key = tuple(label_values)
        counts = self.counts.setdefault(key, [0] * (len(self.buckets) + 1))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value

    def count(self, *label_values: str) -> int:
        counts = self.counts.get(tuple(label_values))
        return counts[-1] if counts else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key in sorted(self.counts):
            counts = self.counts[key]
            for bound, n in zip(self.buckets, counts, strict=False):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {n}")
            inf = _labels(self.labels, key, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{inf} {counts[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {_number(self.sums[key])}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {counts[-1]}")
        return lines


class AgentMetrics:
    """Everything ``/metrics`` shows. Gauges read the agent's state when scraped."""

    def __init__(
        self,
        *,
        version: str,
        host_id: Callable[[], str],
        in_flight: Callable[[], float],
        nats_connected: Callable[[], bool],
        docker_reachable: Callable[[], bool],
    ) -> None:
        self.version = version
        self.host_id = host_id
        self.requests = Counter(
            "shoal_agent_requests_total",
            "Requests answered, by verb and outcome (ok or the error code).",
            ("verb", "outcome"),
        )
        self.durations = Histogram(
            "shoal_agent_request_duration_seconds",
            "Seconds from receiving a request to its final reply, by verb.",
            ("verb",),
        )
        self.reconnects = Counter(
            "shoal_agent_nats_reconnects_total", "Times the agent reconnected to NATS."
        )
        self.disconnects = Counter(
            "shoal_agent_nats_disconnects_total", "Times the agent lost its NATS connection."
        )
        self.events = Counter(
            "shoal_agent_events_published_total", "Events published, by kind.", ("kind",)
        )
        self.gauges = [
            Gauge(
                "shoal_agent_requests_in_flight",
                "Requests received and not answered yet (queued or running).",
                in_flight,
            ),
            Gauge(
                "shoal_agent_nats_connected",
                "1 while the agent is connected to NATS.",
                lambda: float(nats_connected()),
            ),
            Gauge(
                "shoal_agent_docker_reachable",
                "1 while the Docker engine answers (as of the last probe).",
                lambda: float(docker_reachable()),
            ),
        ]

    def observe_request(self, verb: str, outcome: str, seconds: float) -> None:
        self.requests.inc(verb, outcome)
        self.durations.observe(max(0.0, seconds), verb)

    def render(self) -> str:
        lines = [
            "# HELP shoal_agent_info The agent's version and host id.",
            "# TYPE shoal_agent_info gauge",
            f"shoal_agent_info{_labels(('version', 'host'), (self.version, self.host_id()))} 1",
        ]
        for metric in (self.requests, self.durations, self.reconnects, self.disconnects):
            lines.extend(metric.render())
        lines.extend(self.events.render())
        for gauge in self.gauges:
            lines.extend(gauge.render())
        return "\n".join(lines) + "\n"


class MetricsServerError(ShoalError):
    """The metrics server cannot listen where it was asked to."""


class MetricsServer:
    """``GET /metrics`` over HTTP/1.0-style one-shot connections; nothing else."""

    def __init__(self, render: Callable[[], str], address: str, port: int) -> None:
        self.render = render
        self.address = address
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.address, self.port)
        except OSError as exc:
            raise MetricsServerError(
                f"cannot serve metrics on {self.address}:{self.port}: {exc.strerror or exc}"
            ) from exc
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("serving Prometheus metrics on http://%s:%d/metrics", self.address, self.port)

    async def close(self) -> None:
        """Stop listening and close open connections; safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, content_type = self._answer(head)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, body, content_type = "400 Bad Request", "bad request\n", "text/plain"
        except ConnectionError:
            writer.close()
            return
        data = body.encode()
        writer.write(
            (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + data
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _answer(self, head: bytes) -> tuple[str, str, str]:
        if len(head) > MAX_REQUEST_HEAD:
            return "400 Bad Request", "bad request\n", "text/plain"
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3:
            return "400 Bad Request", "bad request\n", "text/plain"
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if method != "GET":
            return "405 Method Not Allowed", "only GET\n", "text/plain"
        if path == "/metrics":
            return "200 OK", self.render(), CONTENT_TYPE
        if path == "/":
            return "200 OK", "shoal-agent: metrics at /metrics\n", "text/plain"
        return "404 Not Found", "not found\n", "text/plain"
