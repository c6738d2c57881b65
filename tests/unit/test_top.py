"""``shoal top``'s pure parts: host states, keys, and a frame over many hosts."""

from __future__ import annotations

import collections
from datetime import timedelta

from rich.console import Console

from shoal.controller.cli.top import Screen, handle_key, render, split_keys
from shoal.controller.live import FleetView, host_state
from shoal.controller.registry import AgentRecord
from shoal.protocol import DockerFacts, Selector, utcnow
from tests.factories import agent_facts


def record(host: str, **fields: object) -> AgentRecord:
    online = bool(fields.pop("online", True))
    now = utcnow()
    seen = now - timedelta(seconds=float(fields.pop("age", 0.0)))  # type: ignore[arg-type]
    facts = agent_facts(host, at=now, heartbeat_interval=5, **fields)
    return AgentRecord(host, facts, seen, online)


def view_of(records: list[AgentRecord]) -> FleetView:
    view = FleetView.__new__(FleetView)
    view.hosts = {r.host_id: r for r in records}
    view.events = collections.deque()

    class Fleet:
        offline_after = None

    view.fleet = Fleet()  # type: ignore[assignment]
    return view


def test_host_states() -> None:
    NOW = utcnow()
    assert host_state(record("a"), NOW) == "online"
    assert host_state(record("a", online=False), NOW) == "offline"
    assert host_state(record("a", age=60), NOW) == "offline"  # silent for 3 beats
    down = record("a", docker=DockerFacts(reachable=False, error="gone"))
    assert host_state(down, NOW) == "docker-down"
    assert host_state(record("a", insecure=True), NOW) == "insecure"


def test_keys_are_split_and_escape_sequences_kept_whole() -> None:
    assert split_keys("role=web\r") == [*"role=web", "\r"]
    assert split_keys("\x1b[6~n") == ["\x1b[6~", "n"]


def test_filter_sort_page_and_quit() -> None:
    screen = Screen()
    for key in ["s", "/", *"role=web", "\r"]:
        assert handle_key(screen, key)
    assert screen.sort == "host"
    assert screen.selector == Selector.build(labels=["role=web"])
    for key in ["/", *"=x", "\r"]:
        handle_key(screen, key)
    assert screen.message  # a bad selector is named, the old filter kept
    assert screen.selector == Selector.build(labels=["role=web"])
    assert handle_key(screen, "q") is False


def test_a_frame_over_ten_thousand_hosts_shows_one_page_and_counts_all() -> None:
    records = [record(f"h{i:05d}", online=i % 10 != 0) for i in range(10_000)]
    view = view_of(records)
    console = Console(width=160, height=40, record=True)
    console.print(render(view, Screen(), 40))
    text = console.export_text()
    assert "10000 hosts: 9000 online" in text and "1000 offline" in text
    assert text.count("\nh0") <= 40  # one page of rows, not ten thousand
    assert "page 1/" in text
