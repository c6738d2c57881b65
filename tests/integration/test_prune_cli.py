"""``shoal df`` and ``shoal prune`` against three real engines."""

from __future__ import annotations

import contextlib
import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import docker
import docker.types
import pytest

from tests.integration.agents import AgentProcess, CliResult, run_shoal
from tests.poll import poll
from tests.stack import BUSYBOX_IMAGE, TEST_LABEL, DockerEngine, NatsServer

pytestmark = pytest.mark.engine

HOSTS = ["host-a", "host-b", "host-c"]


def _tar(content: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("marker")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def import_image(
    client: docker.DockerClient, repo: str, tag: str, content: str, labels: dict[str, str]
) -> str:
    changes = [f"LABEL {k}={v}" for k, v in labels.items()]
    client.api.import_image_from_data(_tar(content), repository=repo, tag=tag, changes=changes)
    return str(client.images.get(f"{repo}:{tag}").id)


@dataclass
class Mix:
    """What one host holds, by the id prune reports."""

    removable: dict[str, set[str]] = field(default_factory=dict)
    survivors: dict[str, set[str]] = field(default_factory=dict)


def build_mix(engine: DockerEngine, label: str, index: int) -> Mix:
    """A known mix of removable and protected objects, all labelled for this test."""
    mine = {TEST_LABEL: label}
    keep = {**mine, "shoal.keep": "true"}
    mix = Mix(
        removable={k: set() for k in ("containers", "images", "volumes", "networks")},
        survivors={k: set() for k in ("containers", "images", "volumes", "networks")},
    )
    with contextlib.closing(engine.client()) as client:

        def container(
            name: str, labels: dict[str, str], *, start: bool = False, image: str = BUSYBOX_IMAGE
        ) -> str:
            c = client.containers.create(
                image,
                ["sleep", "3600"],
                name=name,
                labels=labels,
                network_mode="none",
                stop_signal="SIGKILL",
            )
            if start:
                c.start()
            return str(c.id)

        mix.survivors["containers"].add(container(f"{label}-running", mine, start=True))
        mix.removable["containers"].add(container(f"{label}-exited", mine))
        mix.survivors["containers"].add(container(f"{label}-kept", keep))
        mix.survivors["containers"].add(container(f"keep-{label}", mine))

        repo = f"shoal-test/{label}"
        dangling = import_image(client, repo, "moving", f"old {label}", mine)
        import_image(client, repo, "moving", f"new {label}", mine)  # the old one dangles
        mix.removable["images"].add(dangling)
        mix.survivors["images"].add(client.images.get(f"{repo}:moving").id)  # used below
        container(f"{label}-user", {**mine, "shoal.keep": "true"}, image=f"{repo}:moving")
        mix.removable["images"].add(import_image(client, repo, "unused", f"u {label}", mine))
        mix.survivors["images"].add(import_image(client, repo, "kept", f"k {label}", keep))
        mix.survivors["images"].add(
            import_image(client, f"shoal-test/keep-{label}", "v1", f"p {label}", mine)
        )
        service_image = import_image(client, repo, "svc", f"s {label}", mine)
        previous_image = import_image(client, repo, "svc-prev", f"sp {label}", mine)
        mix.survivors["images"] |= {service_image, previous_image}
        mix.survivors["containers"].add(
            container(
                f"{label}-svc",
                {**mine, "shoal.service": "web", "shoal.previous-image": f"{repo}:svc-prev"},
                image=f"{repo}:svc",
            )
        )

        anonymous = client.volumes.create(labels=mine)  # a 64-hex name, like an anonymous one
        mix.removable["volumes"].add(anonymous.name)
        named = client.volumes.create(f"{label}-named", labels=mine)
        mix.removable["volumes"].add(named.name)  # only with --volumes-all
        mix.survivors["volumes"].add(client.volumes.create(f"{label}-kept", labels=keep).name)

        def network(name: str, labels: dict[str, str], subnet: int) -> str:
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=f"198.18.{subnet}.0/24")]
            )
            return str(client.networks.create(name, internal=True, ipam=ipam, labels=labels).id)

        base = 10 + index * 2
        mix.removable["networks"].add(network(f"{label}-net", mine, base))
        mix.survivors["networks"].add(network(f"{label}-net-kept", keep, base + 1))
    return mix


def reported(result: CliResult, host: str, kind: str) -> set[str]:
    return {item["id"] for item in result.json()["replies"][host]["kinds"][kind]["removed"]}


def everything(label: str, *extra: str) -> list[str]:
    return [
        "prune",
        "containers",
        "images",
        "networks",
        "volumes",
        "--all-images",
        "--volumes-all",
        "--filter",
        f"label={TEST_LABEL}={label}",
        "--json",
        *extra,
    ]


@pytest.fixture
def mixes(engines: list[DockerEngine], test_label: str) -> dict[str, Mix]:
    with ThreadPoolExecutor(len(engines)) as pool:
        built = pool.map(lambda pair: build_mix(pair[1], test_label, pair[0]), enumerate(engines))
        return {engine.name: mix for engine, mix in zip(engines, built, strict=True)}


def present(engine: DockerEngine) -> dict[str, set[str]]:
    with contextlib.closing(engine.client()) as client:
        return {
            "containers": {c.id for c in client.containers.list(all=True)},
            "images": {i.id for i in client.images.list(all=True)},
            "volumes": {v.name for v in client.volumes.list()},
            "networks": {n.id for n in client.networks.list()},
        }


def test_dry_run_lists_exactly_what_the_real_prune_removes(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    sizes: dict[str, dict[str, int]] = {}
    for engine in engines:
        with contextlib.closing(engine.client()) as client:
            df = client.api.df()
        sizes[engine.name] = {
            i["Id"]: i["Size"] - max(0, i["SharedSize"]) for i in df["Images"]
        } | {v["Name"]: max(0, v["UsageData"]["Size"]) for v in df["Volumes"]}

    dry = run_shoal(*everything(test_label, "--dry-run"), server=nats_server.url)
    assert dry.code == 0, dry.stderr
    for engine in engines:
        host, mix = engine.name, mixes[engine.name]
        for kind, expected in mix.removable.items():
            assert reported(dry, host, kind) == expected, (host, kind)
        for item in dry.json()["replies"][host]["kinds"]["images"]["removed"]:
            assert item["size"] == sizes[host][item["id"]]
        # Nothing was removed by the dry run.
        now = present(engine)
        for kind, ids in mix.removable.items():
            assert ids <= now[kind], (host, kind)

    real = run_shoal(*everything(test_label, "--yes"), server=nats_server.url)
    assert real.code == 0, real.stderr
    doc = real.json()
    for engine in engines:
        host, mix = engine.name, mixes[engine.name]
        now = present(engine)
        for kind in mix.removable:
            assert reported(real, host, kind) == reported(dry, host, kind), (host, kind)
            assert not (mix.removable[kind] & now[kind]), f"{kind} left on {host}"
            assert mix.survivors[kind] <= now[kind], f"protected {kind} removed on {host}"
            dry_kind = dry.json()["replies"][host]["kinds"][kind]
            assert doc["replies"][host]["kinds"][kind]["reclaimed"] == dry_kind["reclaimed"]
            assert doc["replies"][host]["kinds"][kind]["failed"] == []
        assert doc["replies"][host]["protected"] > 0
    assert doc["totals"]["removed"] == sum(
        len(ids) for mix in mixes.values() for ids in mix.removable.values()
    )


def test_volumes_survive_unless_named_and_named_ones_need_volumes_all(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    engine = engines[0]
    mix = mixes[engine.name]
    label = ["--filter", f"label={TEST_LABEL}={test_label}", "-H", engine.name, "--yes", "--json"]
    anonymous = {v for v in mix.removable["volumes"] if len(v) == 64}
    named = mix.removable["volumes"] - anonymous

    system = run_shoal("prune", *label, server=nats_server.url)
    assert system.code == 0, system.stderr
    assert "volumes" not in system.json()["replies"][engine.name]["kinds"]
    assert mix.removable["volumes"] <= present(engine)["volumes"]

    plain = run_shoal("prune", "volumes", *label, server=nats_server.url)
    assert plain.code == 0, plain.stderr
    assert reported(plain, engine.name, "volumes") == anonymous
    assert named <= present(engine)["volumes"]

    everything_ = run_shoal("prune", "volumes", "--volumes-all", *label, server=nats_server.url)
    assert reported(everything_, engine.name, "volumes") == named
    assert mix.survivors["volumes"] <= present(engine)["volumes"]


def test_until_keeps_what_is_younger(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    host = engines[1].name
    young = run_shoal(
        *everything(test_label, "--dry-run", "--until", "1h", "-H", host), server=nats_server.url
    )
    assert young.code == 0, young.stderr
    assert all(not reported(young, host, k) for k in mixes[host].removable)

    def listed_after_a_second() -> bool:
        older = run_shoal(
            *everything(test_label, "--dry-run", "--until", "1s", "-H", host),
            server=nats_server.url,
        )
        return reported(older, host, "containers") == mixes[host].removable["containers"]

    poll("objects to be older than 1s", listed_after_a_second, deadline=10)


def test_label_filters_select(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    host = engines[2].name
    base = [
        "prune",
        "containers",
        "--dry-run",
        "--json",
        "-H",
        host,
        "--filter",
        f"label={TEST_LABEL}={test_label}",
    ]
    none = run_shoal(*base, "--filter", "label=no-such-label", server=nats_server.url)
    assert reported(none, host, "containers") == set()
    negated = run_shoal(*base, "--filter", "label!=no-such-label", server=nats_server.url)
    assert reported(negated, host, "containers") == mixes[host].removable["containers"]
    other = run_shoal(
        *base, "--filter", f"label!={TEST_LABEL}={test_label}", server=nats_server.url
    )
    assert reported(other, host, "containers") == set()


def test_refuses_without_yes_when_not_on_a_terminal(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    result = run_shoal(
        "prune", "--filter", f"label={TEST_LABEL}={test_label}", server=nats_server.url
    )
    assert result.code == 2
    assert "--yes" in result.stderr
    for engine in engines:
        assert mixes[engine.name].removable["containers"] <= present(engine)["containers"]


@pytest.mark.parametrize(
    "args",
    [["bogus"], ["--until", "soon"], ["--filter", "color=red"], ["images", "--volumes-all"]],
)
def test_bad_prune_arguments_are_usage_errors(
    nats_server: NatsServer, agents: dict[str, AgentProcess], args: list[str]
) -> None:
    result = run_shoal("prune", "--dry-run", *args, server=nats_server.url)
    assert result.code == 2, result.stderr


def test_failing_host_is_reported_while_the_others_complete(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
    test_label: str,
) -> None:
    down = engines[2]
    down.stop()
    try:
        result = run_shoal(*everything(test_label, "--yes"), server=nats_server.url)
        assert result.code == 1, result.stderr
        doc = result.json()
        assert doc["errors"][down.name]["code"] == "docker_unavailable"
        for engine in engines[:2]:
            assert (
                reported(result, engine.name, "containers")
                == (mixes[engine.name].removable["containers"])
            )
    finally:
        down.start()


def test_df_reports_usage_per_kind_and_fleet_totals(
    nats_server: NatsServer,
    agents: dict[str, AgentProcess],
    engines: list[DockerEngine],
    mixes: dict[str, Mix],
) -> None:
    result = run_shoal("df", "--json", server=nats_server.url)
    assert result.code == 0, result.stderr
    doc = result.json()
    for engine in engines:
        usage = doc["replies"][engine.name]["usage"]
        assert set(usage) == {"images", "containers", "volumes", "build-cache"}
        with contextlib.closing(engine.client()) as client:
            df = client.api.df()
        assert usage["images"]["count"] == len(df["Images"])
        assert usage["images"]["size"] == df["LayersSize"]
        assert usage["containers"]["count"] == len(df["Containers"])
        assert usage["volumes"]["count"] == len(df["Volumes"])
        for kind in usage.values():
            assert 0 <= kind["reclaimable"] <= kind["size"]
    total = doc["totals"]["images"]["count"]
    assert total == sum(doc["replies"][h]["usage"]["images"]["count"] for h in HOSTS)
    table = run_shoal("df", server=nats_server.url)
    assert table.code == 0 and "RECLAIMABLE" in table.stdout and "fleet" in table.stdout
