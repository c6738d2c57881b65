"""The agent's Prometheus metrics: the text format and the tiny HTTP server."""

from __future__ import annotations

import asyncio
import re

import pytest

from shoal.agent.config import AgentSettings
from shoal.agent.metrics import AgentMetrics, Counter, Histogram, MetricsServer, MetricsServerError

SAMPLE_RE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.e+]+|NaN|[+-]Inf)$"
)


class State:
    connected = True
    reachable = False
    in_flight = 3


def make_metrics(state: State) -> AgentMetrics:
    return AgentMetrics(
        version="1.2.3",
        host_id=lambda: "pi-4",
        in_flight=lambda: state.in_flight,
        nats_connected=lambda: state.connected,
        docker_reachable=lambda: state.reachable,
    )


def samples(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        assert SAMPLE_RE.match(line), f"not a valid sample line: {line!r}"
        key, _, value = line.rpartition(" ")
        found[key] = float(value)
    return found


def test_exposition_format_and_values() -> None:
    state = State()
    metrics = make_metrics(state)
    metrics.observe_request("ps", "ok", 0.02)
    metrics.observe_request("ps", "ok", 3.0)
    metrics.observe_request("stop", "forbidden", 0.001)
    metrics.reconnects.inc()
    metrics.events.inc("container")
    text = metrics.render()
    assert text.endswith("\n")
    values = samples(text)
    assert values['shoal_agent_info{version="1.2.3",host="pi-4"}'] == 1
    assert values['shoal_agent_requests_total{verb="ps",outcome="ok"}'] == 2
    assert values['shoal_agent_requests_total{verb="stop",outcome="forbidden"}'] == 1
    assert values['shoal_agent_request_duration_seconds_count{verb="ps"}'] == 2
    assert values['shoal_agent_request_duration_seconds_sum{verb="ps"}'] == pytest.approx(3.02)
    assert values['shoal_agent_request_duration_seconds_bucket{verb="ps",le="0.025"}'] == 1
    assert values['shoal_agent_request_duration_seconds_bucket{verb="ps",le="2.5"}'] == 1
    assert values['shoal_agent_request_duration_seconds_bucket{verb="ps",le="5"}'] == 2
    assert values['shoal_agent_request_duration_seconds_bucket{verb="ps",le="+Inf"}'] == 2
    assert values["shoal_agent_nats_reconnects_total"] == 1
    assert values["shoal_agent_nats_disconnects_total"] == 0
    assert values['shoal_agent_events_published_total{kind="container"}'] == 1
    assert values["shoal_agent_requests_in_flight"] == 3
    assert values["shoal_agent_nats_connected"] == 1
    assert values["shoal_agent_docker_reachable"] == 0
    assert "# TYPE shoal_agent_requests_total counter" in text
    assert "# TYPE shoal_agent_request_duration_seconds histogram" in text
    assert "# TYPE shoal_agent_nats_connected gauge" in text

    state.connected, state.reachable, state.in_flight = False, True, 0
    later = samples(metrics.render())
    assert later["shoal_agent_nats_connected"] == 0
    assert later["shoal_agent_docker_reachable"] == 1
    assert later["shoal_agent_requests_in_flight"] == 0


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram("h", "help", ("verb",), buckets=(1, 2, 3))
    for value in (0.5, 1.5, 1.7, 2.5, 10):
        histogram.observe(value, "x")
    lines = histogram.render()
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("h_bucket")]
    assert counts == [1, 3, 4, 5]
    assert histogram.count("x") == 5


def test_label_values_are_escaped() -> None:
    counter = Counter("c_total", "help", ("verb",))
    counter.inc('a"b\\c\nd')
    (line,) = [line for line in counter.render() if not line.startswith("#")]
    assert line == 'c_total{verb="a\\"b\\\\c\\nd"} 1'
    assert SAMPLE_RE.match(line)


def test_a_broken_gauge_does_not_break_the_scrape() -> None:
    def broken() -> float:
        raise RuntimeError("boom")

    metrics = AgentMetrics(
        version="1",
        host_id=lambda: "h",
        in_flight=broken,
        nats_connected=lambda: True,
        docker_reachable=lambda: True,
    )
    assert "shoal_agent_requests_in_flight NaN" in metrics.render()


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    status, *header_lines = head.split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return status, headers, body


async def test_server_answers_get_metrics_only() -> None:
    state = State()
    metrics = make_metrics(state)
    server = MetricsServer(metrics.render, "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port > 0
        status, headers, body = await http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert int(headers["Content-Length"]) == len(body.encode())
        assert samples(body)["shoal_agent_requests_in_flight"] == 3

        metrics.observe_request("ps", "ok", 0.1)
        _, _, again = await http(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert samples(again)['shoal_agent_requests_total{verb="ps",outcome="ok"}'] == 1

        assert (await http(server.port, b"GET / HTTP/1.1\r\n\r\n"))[0].endswith("200 OK")
        assert (await http(server.port, b"GET /x HTTP/1.1\r\n\r\n"))[0].endswith("404 Not Found")
        post = await http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert post[0].endswith("405 Method Not Allowed")
        assert (await http(server.port, b"nonsense\r\n\r\n"))[0].endswith("400 Bad Request")
    finally:
        await server.close()
        await server.close()  # twice is fine


async def test_server_refuses_a_port_in_use() -> None:
    first = MetricsServer(lambda: "", "127.0.0.1", 0)
    await first.start()
    try:
        second = MetricsServer(lambda: "", "127.0.0.1", first.port)
        with pytest.raises(MetricsServerError, match=f"127.0.0.1:{first.port}"):
            await second.start()
    finally:
        await first.close()


def test_settings_default_to_loopback_and_read_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SHOAL_METRICS_PORT", raising=False)
    monkeypatch.delenv("SHOAL_METRICS_ADDRESS", raising=False)
    plain = AgentSettings(insecure=True)
    assert plain.metrics_port is None and plain.metrics_address == "127.0.0.1"
    monkeypatch.setenv("SHOAL_METRICS_PORT", "9464")
    assert AgentSettings(insecure=True).metrics_port == 9464
    assert AgentSettings.from_options({"metrics_port": 9100}).metrics_port == 9100
    monkeypatch.setenv("SHOAL_METRICS_PORT", "70000")
    with pytest.raises(ValueError, match="SHOAL_METRICS_PORT"):
        AgentSettings(insecure=True)
