"""The expected set: --limit parsing and resolve_targets (controller/targeting.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.controller.errors import InvalidLimit
from shoal.controller.registry import AgentRecord
from shoal.controller.targeting import Limit, Targets, resolve_targets
from shoal.protocol import AgentFacts, DockerFacts, Selector, ShoalError

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def record(
    host_id: str,
    *,
    online: bool = True,
    labels: dict[str, str] | None = None,
    arch: str = "amd64",
    variant: str = "",
    os: str = "linux",
) -> AgentRecord:
    facts = AgentFacts(
        host_id=host_id,
        instance=f"instance-{host_id}",
        labels=labels or {},
        arch=arch,
        variant=variant,
        os=os,
        kernel="6.1.0",
        docker=DockerFacts(reachable=True, version="27.0.0"),
        agent_version="0.1.0",
        protocol_version=1,
        started_at=T0,
        sent_at=T0,
        heartbeat_interval=5.0,
    )
    return AgentRecord(host_id=host_id, facts=facts, last_seen=T0, online=online)


def sel(*labels: str, hosts: tuple[str, ...] = ()) -> Selector:
    return Selector.build(hosts=hosts, labels=labels)


FLEET = [
    record("web-1", labels={"role": "web", "zone": "eu"}),
    record("web-2", labels={"role": "web", "zone": "us", "canary": "true"}),
    record("web-3", labels={"role": "web", "zone": "eu"}, online=False),
    record("db-1", labels={"role": "db", "zone": "eu"}),
    record("pi-kitchen", labels={"role": "sensor"}, arch="arm", variant="v7"),
    record("pi-garage", labels={"role": "sensor"}, arch="arm64", online=False),
]


# --- Limit.parse ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", Limit(5, percent=False)),
        ("10%", Limit(10, percent=True)),
        (" 7 ", Limit(7, percent=False)),
        ("25 %", Limit(25, percent=True)),
        ("\t3\n", Limit(3, percent=False)),
        ("100%", Limit(100, percent=True)),
        ("1%", Limit(1, percent=True)),
        ("007", Limit(7, percent=False)),
        ("100000", Limit(100_000, percent=False)),
        (4, Limit(4, percent=False)),
    ],
)
def test_limit_parse(text: str | int, expected: Limit) -> None:
    assert Limit.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "0",
        "0%",
        "101%",
        "-1",
        "+1",
        "abc",
        "5.5",
        "1e3",
        "%",
        "5%%",
        "%5",
        "5 5",
        "0x10",
        0,
    ],
)
def test_limit_parse_rejects(text: str | int) -> None:
    with pytest.raises(InvalidLimit) as caught:
        Limit.parse(text)
    assert f"invalid limit {text!r}" in str(caught.value)  # names the bad value
    assert isinstance(caught.value, ShoalError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("limit", "total", "count"),
    [
        ("10%", 5, 1),  # rounds up, and never to zero
        ("50%", 3, 2),
        ("1%", 250, 3),
        ("33%", 3, 1),
        ("34%", 3, 2),
        ("100%", 7, 7),
        ("10%", 0, 0),
        ("3", 10, 3),
        ("10", 3, 3),  # more than there are
        ("1", 0, 0),
    ],
)
def test_limit_count(limit: str, total: int, count: int) -> None:
    assert Limit.parse(limit).count(total) == count


@settings(max_examples=200, database=None, deadline=None)
@given(total=st.integers(0, 100_000), percent=st.integers(1, 100))
def test_limit_count_is_the_share_rounded_up(total: int, percent: int) -> None:
    count = Limit(percent, percent=True).count(total)
    assert 0 <= count <= total
    assert (count == 0) == (total == 0)
    assert count * 100 >= total * percent  # at least the share asked for
    assert count <= 1 or (count - 1) * 100 < total * percent  # and no more


# --- resolve_targets ------------------------------------------------------------------


def test_everything_splits_online_and_offline() -> None:
    targets = resolve_targets(FLEET, Selector())
    assert targets.online == ["db-1", "pi-kitchen", "web-1", "web-2"]
    assert targets.offline == ["pi-garage", "web-3"]
    assert targets.all == sorted(r.host_id for r in FLEET)


@pytest.mark.parametrize(
    ("selector", "online", "offline"),
    [
        (sel("role=web"), ["web-1", "web-2"], ["web-3"]),
        (sel("role=web,zone=eu"), ["web-1"], ["web-3"]),
        (sel("role=web", "!canary"), ["web-1"], ["web-3"]),
        (sel("role in (db,sensor)"), ["db-1", "pi-kitchen"], ["pi-garage"]),
        (sel("zone notin (eu)"), ["pi-kitchen", "web-2"], ["pi-garage"]),
        (sel(hosts=("pi-*",)), ["pi-kitchen"], ["pi-garage"]),
        (sel(hosts=("web-1", "db-*")), ["db-1", "web-1"], []),
        (sel("zone=eu", hosts=("web-*",)), ["web-1"], ["web-3"]),
        (sel("role=nobody"), [], []),
    ],
)
def test_selector_matches_labels_and_globs(
    selector: Selector, online: list[str], offline: list[str]
) -> None:
    assert resolve_targets(FLEET, selector) == Targets(online=online, offline=offline)


@pytest.mark.parametrize(
    ("selector", "online", "offline"),
    [
        (sel("arch=arm"), ["pi-kitchen"], []),
        (sel("arch in (arm,arm64)"), ["pi-kitchen"], ["pi-garage"]),
        (sel("variant=v7"), ["pi-kitchen"], []),
        (sel("variant"), ["pi-kitchen"], []),  # variant is only set when there is one
        (sel("os=linux,arch=amd64,role=db"), ["db-1"], []),
        (sel("host=web-2"), ["web-2"], []),
        (sel("kernel=6.1.0,role=sensor"), ["pi-kitchen"], ["pi-garage"]),
    ],
)
def test_selector_matches_facts(selector: Selector, online: list[str], offline: list[str]) -> None:
    assert resolve_targets(FLEET, selector) == Targets(online=online, offline=offline)


def test_limit_samples_online_hosts_only() -> None:
    fleet = [record(f"n-{i:02d}") for i in range(20)] + [
        record(f"off-{i}", online=False) for i in range(5)
    ]
    targets = resolve_targets(fleet, Selector(), Limit.parse("25%"), rng=random.Random(7))
    assert len(targets.online) == 5
    assert set(targets.online) <= {f"n-{i:02d}" for i in range(20)}
    assert targets.online == sorted(targets.online)
    assert targets.offline == []  # a sample is of reachable hosts; no silent misses

    everyone = resolve_targets(fleet, Selector(), Limit.parse("50"), rng=random.Random(7))
    assert everyone.online == sorted(f"n-{i:02d}" for i in range(20))


def test_limit_applies_after_the_selector() -> None:
    targets = resolve_targets(FLEET, sel("role=web"), Limit.parse("1"), rng=random.Random(1))
    assert len(targets.online) == 1
    assert targets.online[0] in {"web-1", "web-2"}


def test_limit_with_no_online_match_is_empty() -> None:
    targets = resolve_targets(FLEET, sel("role=sensor", "arch=arm64"), Limit.parse("100%"))
    assert targets == Targets(online=[], offline=[])


def test_limit_sample_is_reproducible_with_a_seed() -> None:
    fleet = [record(f"n-{i:02d}") for i in range(30)]
    limit = Limit.parse("20%")

    def pick(seed: int) -> list[str]:
        return resolve_targets(fleet, Selector(), limit, rng=random.Random(seed)).online

    assert pick(42) == pick(42)
    assert all(len(pick(seed)) == 6 for seed in range(10))
    assert len({tuple(pick(seed)) for seed in range(10)}) > 1  # and really random


def test_records_may_be_any_iterable() -> None:
    targets = resolve_targets(iter(FLEET), sel("role=db"))
    assert targets.online == ["db-1"]
