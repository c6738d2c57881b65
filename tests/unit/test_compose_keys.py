"""The compose keys Shoal reads with Compose's meaning: networks, the project name,
secrets and configs, profiles, depends_on conditions, deploy.*, build, and the
container options (expose, dns, tmpfs, ulimits, logging, ...), from real YAML text."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from shoal.controller.compose import ComposeError, ComposeProject, load_compose
from shoal.controller.compose.files import MAX_VALUE
from shoal.protocol.service import (
    FileMount,
    IpamPool,
    IpamSpec,
    LoggingSpec,
    NetworkAttachment,
    NetworkSpec,
    ServiceSpec,
    Ulimit,
    VolumeSpec,
)

# --- helpers ------------------------------------------------------------------------

COMPOSE = "compose.yml"
DEFAULT = NetworkSpec(name="demo_default")


def write(directory: Path, text: str, name: str = COMPOSE) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(
    directory: Path,
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
    project: str | None = None,
    profiles: Sequence[str] = (),
) -> ComposeProject:
    return load_compose(
        write(directory, text),
        environ={} if environ is None else environ,
        services=services,
        project=project,
        profiles=profiles,
    )


def error(
    directory: Path,
    text: str,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
    project: str | None = None,
    profiles: Sequence[str] = (),
) -> str:
    with pytest.raises(ComposeError) as info:
        load(
            directory,
            text,
            environ=environ,
            services=services,
            project=project,
            profiles=profiles,
        )
    message: str = info.value.message
    return message


def one_service(body: str, top: str = "") -> str:
    """A file of project ``demo`` with the one service ``web`` whose keys are ``body``."""
    text = "name: demo\nservices:\n  web:\n    image: nginx\n"
    text += textwrap.indent(textwrap.dedent(body), "    ")
    return text + textwrap.dedent(top)


def service(
    directory: Path, body: str, top: str = "", *, environ: Mapping[str, str] | None = None
) -> ServiceSpec:
    project = load(directory, one_service(body, top), environ=environ)
    assert project.names == ["web"]
    return project.services[0]


def service_error(
    directory: Path, body: str, top: str = "", *, environ: Mapping[str, str] | None = None
) -> str:
    return error(directory, one_service(body, top), environ=environ)


def where(directory: Path, key: str) -> str:
    """The start of an error message about ``key`` of the file in ``directory``."""
    return f"{directory / COMPOSE}: {key}: "


# --- the container options, one key at a time -------------------------------------


@pytest.mark.parametrize(
    "body, field, expected",
    [
        ("container_name: web-1", "container_name", "web-1"),
        ("container_name: My_App.2", "container_name", "My_App.2"),
        ("platform: linux/amd64", "platform", "linux/amd64"),
        ("platform: Linux/ARM64/v8", "platform", "linux/arm64/v8"),
        ("pull_policy: always", "pull_policy", "always"),
        ("pull_policy: missing", "pull_policy", "missing"),
        ("pull_policy: if_not_present", "pull_policy", "missing"),
        ("pull_policy: never", "pull_policy", "never"),
        ("pull_policy: Always", "pull_policy", "always"),
        ("expose: ['80']", "expose", ("80/tcp",)),
        ("expose: [80, '443/tcp', '53/udp']", "expose", ("80/tcp", "443/tcp", "53/udp")),
        ("expose: ['8000-8002/udp']", "expose", ("8000/udp", "8001/udp", "8002/udp")),
        ("expose: ['80', 80, '80/tcp']", "expose", ("80/tcp",)),
        ("extra_hosts: ['db:10.0.0.5']", "extra_hosts", ("db:10.0.0.5",)),
        ("extra_hosts: ['db=10.0.0.5']", "extra_hosts", ("db:10.0.0.5",)),
        ("extra_hosts: ['six:::1']", "extra_hosts", ("six:::1",)),
        ("extra_hosts: ['six=[::1]']", "extra_hosts", ("six:::1",)),
        ("extra_hosts: ['gw:host-gateway']", "extra_hosts", ("gw:host-gateway",)),
        (
            "extra_hosts: {db: 10.0.0.5, gw: host-gateway}",
            "extra_hosts",
            ("db:10.0.0.5", "gw:host-gateway"),
        ),
        ("dns: 8.8.8.8", "dns", ("8.8.8.8",)),
        ("dns: [1.1.1.1, 8.8.8.8]", "dns", ("1.1.1.1", "8.8.8.8")),
        ("dns_search: example.com", "dns_search", ("example.com",)),
        ("dns_search: [a.example, b.example]", "dns_search", ("a.example", "b.example")),
        ("dns_opt: [use-vc, 'ndots:2']", "dns_opt", ("use-vc", "ndots:2")),
        ("tmpfs: /run", "tmpfs", ("/run",)),
        ("tmpfs: [/run, '/tmp:size=64m,mode=1777']", "tmpfs", ("/run", "/tmp:size=64m,mode=1777")),
        ("ulimits: {nproc: 65535}", "ulimits", {"nproc": Ulimit(soft=65535, hard=65535)}),
        (
            "ulimits: {nofile: {soft: 20000, hard: 40000}, core: -1}",
            "ulimits",
            {"nofile": Ulimit(soft=20000, hard=40000), "core": Ulimit(soft=-1, hard=-1)},
        ),
        ("init: true", "init", True),
        ("init: false", "init", False),
        ("read_only: true", "read_only", True),
        ("shm_size: 64m", "shm_size", 64 * 1024**2),
        ("shm_size: 1000000", "shm_size", 1000000),
        ("sysctls: {net.core.somaxconn: 1024}", "sysctls", {"net.core.somaxconn": "1024"}),
        ("sysctls: ['net.ipv4.ip_forward=1']", "sysctls", {"net.ipv4.ip_forward": "1"}),
        ("group_add: [mail, 1000]", "group_add", ("mail", "1000")),
        ("hostname: web1", "hostname", "web1"),
        ("domainname: example.com", "domainname", "example.com"),
        ("mac_address: '02:42:ac:11:65:43'", "mac_address", "02:42:ac:11:65:43"),
        ("logging: {driver: none}", "logging", LoggingSpec(driver="none")),
        (
            "logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}",
            "logging",
            LoggingSpec(driver="json-file", options={"max-size": "10m", "max-file": "3"}),
        ),
        ("logging: {options: {tag: web}}", "logging", LoggingSpec(options={"tag": "web"})),
        ("tty: true", "tty", True),
        ("stdin_open: 'yes'", "stdin_open", True),
        ("pids_limit: 100", "pids_limit", 100),
        ("pids_limit: -1", "pids_limit", -1),
        ("cpu_shares: 512", "cpu_shares", 512),
        ("cpuset: 0-3", "cpuset", "0-3"),
        ("cpuset: '0,1'", "cpuset", "0,1"),
        ("memswap_limit: 1g", "memswap_limit", 1024**3),
        ("memswap_limit: -1", "memswap_limit", -1),
        ("oom_score_adj: -500", "oom_score_adj", -500),
        ("mem_reservation: 256m", "mem_reservation", 256 * 1024**2),
    ],
)
def test_a_key_is_read_into_its_field(
    tmp_path: Path, body: str, field: str, expected: object
) -> None:
    assert getattr(service(tmp_path, body + "\n"), field) == expected


def test_the_options_are_unset_by_default(tmp_path: Path) -> None:
    spec = service(tmp_path, "")
    assert spec == ServiceSpec(
        name="web", image="nginx", networks=(NetworkAttachment(network=DEFAULT),)
    )


def test_the_options_take_interpolated_values(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        hostname: ${HOST}
        shm_size: ${SHM}
        init: ${INIT}
        pids_limit: ${PIDS}
        dns: ${DNS}
        """,
        environ={"HOST": "web7", "SHM": "1g", "INIT": "true", "PIDS": "50", "DNS": "9.9.9.9"},
    )
    assert (spec.hostname, spec.shm_size, spec.init, spec.pids_limit, spec.dns) == (
        "web7",
        1024**3,
        True,
        50,
        ("9.9.9.9",),
    )


@pytest.mark.parametrize(
    "body, key, message",
    [
        ("container_name: 'bad name'", "container_name", "'bad name': a container name is"),
        ("container_name: web.r3", "container_name", "must not end like a revision (.rN)"),
        ("container_name: [web]", "container_name", "must be a string, not a list"),
        ("platform: amd64", "platform", "'amd64' must be OS/ARCH[/VARIANT], like linux/arm64"),
        ("pull_policy: build", "pull_policy", "'build': Shoal deploys images and does not build"),
        ("pull_policy: daily", "pull_policy", "'daily' must be always, missing or never"),
        ("expose: [http]", "expose[0]", "invalid port 'http'"),
        ("expose: ['80/icmp']", "expose[0]", "protocol 'icmp' must be tcp, udp or sctp"),
        ("expose: ['0']", "expose[0]", "invalid port '0' (ports are 1-65535)"),
        ("extra_hosts: [nohost]", "extra_hosts[0]", "must be NAME:ADDRESS"),
        ("extra_hosts: ['db:nowhere']", "extra_hosts[0]", "'nowhere' is not an IP address"),
        ("extra_hosts: {db: nowhere}", "extra_hosts.db", "'nowhere' is not an IP address"),
        ("dns: {a: 1}", "dns", "must be a string, not a mapping"),
        ("dns_search: [[a]]", "dns_search[0]", "must be a string, not a list"),
        ("dns_opt: use-vc", "dns_opt", "must be a list, not str"),
        ("tmpfs: [[/run]]", "tmpfs[0]", "must be a string, not a list"),
        ("ulimits: {nofile: {soft: 2, hard: 1}}", "ulimits.nofile", "soft limit 2 is above"),
        ("ulimits: {nofile: {soft: 2}}", "ulimits.nofile", "needs both soft and hard"),
        ("ulimits: {nofile: {soft: 1, hard: 2, max: 3}}", "ulimits.nofile.max", "not supported"),
        ("ulimits: {NOFILE: 1}", "ulimits.NOFILE", "'NOFILE' is not a ulimit name"),
        ("ulimits: {nofile: lots}", "ulimits.nofile", "must be an integer, not 'lots'"),
        ("ulimits: [nofile]", "ulimits", "must be a mapping, not a list"),
        ("init: maybe", "init", "must be true or false, not 'maybe'"),
        ("read_only: 2", "read_only", "must be true or false, not 2"),
        ("tty: maybe", "tty", "must be true or false"),
        ("stdin_open: maybe", "stdin_open", "must be true or false"),
        ("shm_size: lots", "shm_size", 'must be a size like "512m"'),
        ("shm_size: 0", "shm_size", "must be more than 0 bytes"),
        ("sysctls: {a: [1]}", "sysctls.a", "must be a string, not a list"),
        ("sysctls: ['=1']", "sysctls[0]", "'=1' has no label name"),
        ("group_add: mail", "group_add", "must be a list, not str"),
        ("hostname: [a]", "hostname", "must be a string, not a list"),
        ("domainname: {a: b}", "domainname", "must be a string, not a mapping"),
        ("mac_address: nope", "mac_address", "String should match pattern"),
        ("logging: {drive: none}", "logging.drive", "not supported by Shoal"),
        ("logging: {options: {a: [1]}}", "logging.options.a", "must be a string, not a list"),
        ("logging: none", "logging", "must be a mapping, not str"),
        ("pids_limit: many", "pids_limit", "must be an integer, not 'many'"),
        ("pids_limit: -2", "pids_limit", "greater than or equal to -1"),
        ("cpu_shares: -1", "cpu_shares", "greater than or equal to 0"),
        ("cpuset: [0]", "cpuset", "must be a string, not a list"),
        ("memswap_limit: lots", "memswap_limit", 'must be a size like "512m"'),
        ("oom_score_adj: 2000", "oom_score_adj", "less than or equal to 1000"),
        ("oom_score_adj: high", "oom_score_adj", "must be an integer"),
        ("mem_reservation: 0", "mem_reservation", "must be more than 0 bytes"),
    ],
)
def test_a_bad_value_names_the_file_and_the_key(
    tmp_path: Path, body: str, key: str, message: str
) -> None:
    text = service_error(tmp_path, body + "\n")
    assert text.startswith(where(tmp_path, f"services.web.{key}"))
    assert message in text


# --- tmpfs volumes and long-syntax volume options ------------------------------------


def test_tmpfs_volumes_join_the_tmpfs_key(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        tmpfs: /run
        volumes:
          - type: tmpfs
            target: /cache
          - type: tmpfs
            target: /tmp
            read_only: true
            tmpfs:
              size: 1m
              mode: 01777
          - type: tmpfs
            target: /scratch
            tmpfs: {size: 65536, mode: "0700"}
          - data:/data
        """,
        "volumes:\n  data:\n",
    )
    assert spec.tmpfs == (
        "/run",
        "/cache",
        "/tmp:size=1048576,mode=1777,ro",
        "/scratch:size=65536,mode=700",
    )
    assert spec.volumes == (VolumeSpec(type="volume", source="data", target="/data"),)


@pytest.mark.parametrize(
    "entry, key, message",
    [
        ("{type: tmpfs}", "volumes[0].target", "required"),
        ("{type: tmpfs, target: run}", "volumes[0].target", "'run' must be an absolute path"),
        ("{type: tmpfs, target: /r, source: x}", "volumes[0].source", "not supported by Shoal"),
        ("{type: tmpfs, target: /r, tmpfs: {size: lots}}", "volumes[0].tmpfs.size", "a size"),
        ("{type: tmpfs, target: /r, tmpfs: {mode: '9'}}", "volumes[0].tmpfs.mode", "octal"),
        ("{type: tmpfs, target: /r, tmpfs: {mode: 010000}}", "volumes[0].tmpfs.mode", "0o10000"),
        ("{type: tmpfs, target: /r, tmpfs: {uid: 1}}", "volumes[0].tmpfs.uid", "not supported"),
        ("{type: tmpfs, target: /r, read_only: maybe}", "volumes[0].read_only", "true or false"),
    ],
)
def test_bad_tmpfs_volumes(tmp_path: Path, entry: str, key: str, message: str) -> None:
    text = service_error(tmp_path, f"volumes:\n  - {entry}\n")
    assert text.startswith(where(tmp_path, f"services.web.{key}"))
    assert message in text


def test_volume_nocopy_and_bind_create_host_path(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        volumes:
          - type: volume
            source: data
            target: /data
            volume: {nocopy: true}
          - type: volume
            source: data
            target: /copy
            volume: {}
          - type: bind
            source: /srv
            target: /srv
            bind: {create_host_path: false}
          - type: bind
            source: /opt
            target: /opt
        """,
        "volumes:\n  data:\n",
    )
    assert spec.volumes == (
        VolumeSpec(type="volume", source="data", target="/data", nocopy=True),
        VolumeSpec(type="volume", source="data", target="/copy"),
        VolumeSpec(type="bind", source="/srv", target="/srv", create_host_path=False),
        VolumeSpec(type="bind", source="/opt", target="/opt"),
    )
    assert spec.volumes[1].nocopy is False
    assert spec.volumes[3].create_host_path is True


@pytest.mark.parametrize(
    "entry, key, message",
    [
        (
            "{type: bind, source: /a, target: /b, bind: {create_host_path: x}}",
            "bind.create_host_path",
            "true or false",
        ),
        (
            "{type: bind, source: /a, target: /b, bind: {selinux: q}}",
            "bind.selinux",
            "must be z or Z",
        ),
        ("{type: volume, source: data, target: /b, bind: {}}", "bind", "only for type: bind"),
        (
            "{type: volume, source: data, target: /b, volume: {nocopy: x}}",
            "volume.nocopy",
            "true or false",
        ),
    ],
)
def test_bad_volume_options(tmp_path: Path, entry: str, key: str, message: str) -> None:
    text = service_error(tmp_path, f"volumes:\n  - {entry}\n", "volumes:\n  data:\n")
    assert text.startswith(where(tmp_path, f"services.web.volumes[0].{key}"))
    assert message in text


@pytest.mark.parametrize(
    "body, source",
    [("", "data"), ("name: app-data", "app-data"), ("external: true", "data")],
)
def test_top_level_volume_name_and_external(tmp_path: Path, body: str, source: str) -> None:
    spec = service(tmp_path, "volumes: ['data:/data']\n", f"volumes:\n  data:\n    {body}\n")
    assert spec.volumes == (VolumeSpec(type="volume", source=source, target="/data"),)


# --- networks -----------------------------------------------------------------------


def test_a_service_without_networks_is_on_the_default_network(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        name: demo
        services:
          web:
            image: nginx
          api:
            image: app
        """,
    )
    for spec in project.services:
        assert spec.networks == (NetworkAttachment(network=DEFAULT),)


def test_a_service_with_networks_is_only_on_those(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        name: demo
        services:
          web:
            image: nginx
            networks: [front, back]
          db:
            image: postgres
            networks:
              back:
          lone:
            image: busybox
        networks:
          front:
          back: {}
        """,
    )
    web, db, lone = project.services
    assert web.networks == (
        NetworkAttachment(network=NetworkSpec(name="demo_back")),
        NetworkAttachment(network=NetworkSpec(name="demo_front")),
    )
    assert db.networks == (NetworkAttachment(network=NetworkSpec(name="demo_back")),)
    assert lone.networks == (NetworkAttachment(network=DEFAULT),)


def test_the_default_network_can_be_named_explicitly_beside_others(tmp_path: Path) -> None:
    spec = service(tmp_path, "networks: [default, front]\n", "networks:\n  front:\n")
    assert [a.network.name for a in spec.networks] == ["demo_default", "demo_front"]


def test_attachment_options_aliases_addresses_and_priority(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        networks:
          front:
            aliases: [www, site]
            ipv4_address: 172.28.0.10
            ipv6_address: "2001:db8::0010"
          back:
            priority: 10
          mid:
            aliases: []
        """,
        """\
        networks:
          front:
            ipam: {config: [{subnet: 172.28.0.0/16}]}
          back:
          mid:
        """,
    )
    assert spec.networks == (
        NetworkAttachment(network=NetworkSpec(name="demo_back"), priority=10),
        NetworkAttachment(
            network=NetworkSpec(
                name="demo_front", ipam=IpamSpec(config=(IpamPool(subnet="172.28.0.0/16"),))
            ),
            aliases=("www", "site"),
            ipv4_address="172.28.0.10",
            ipv6_address="2001:db8::10",
        ),
        NetworkAttachment(network=NetworkSpec(name="demo_mid")),
    )


def test_the_default_network_can_be_redefined(tmp_path: Path) -> None:
    spec = service(tmp_path, "", "networks:\n  default:\n    name: shared\n    external: true\n")
    assert spec.networks == (NetworkAttachment(network=NetworkSpec(name="shared", external=True)),)
    spec = service(tmp_path, "", "networks:\n  default:\n    driver: macvlan\n")
    assert spec.networks == (
        NetworkAttachment(network=NetworkSpec(name="demo_default", driver="macvlan")),
    )


def test_network_mode_means_no_networks(tmp_path: Path) -> None:
    spec = service(tmp_path, "network_mode: host\n")
    assert spec.network_mode == "host"
    assert spec.networks == ()


def test_network_mode_and_networks_together_are_an_error(tmp_path: Path) -> None:
    message = service_error(tmp_path, "network_mode: host\nnetworks: [default]\n")
    assert message == (
        where(tmp_path, "services.web.networks")
        + "network_mode and networks cannot be set together"
    )


def test_external_networks(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        "networks: [proxy, other]\n",
        """\
        networks:
          proxy:
            external: true
          other:
            external: true
            name: traefik_public
        """,
    )
    assert spec.networks == (
        NetworkAttachment(network=NetworkSpec(name="proxy", external=True)),
        NetworkAttachment(network=NetworkSpec(name="traefik_public", external=True)),
    )


def test_a_named_network_keeps_its_name_without_the_project(tmp_path: Path) -> None:
    spec = service(tmp_path, "networks: [front]\n", "networks:\n  front:\n    name: my-front\n")
    assert spec.networks == (NetworkAttachment(network=NetworkSpec(name="my-front")),)


def test_network_definitions(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        "networks: [front]\n",
        """\
        networks:
          front:
            driver: bridge
            driver_opts:
              com.docker.network.bridge.name: br-front
              com.docker.network.driver.mtu: 1400
            internal: true
            attachable: "true"
            enable_ipv6: true
            labels: [team=core, tier]
            ipam:
              driver: default
              config:
                - subnet: 172.28.5.1/16
                  ip_range: 172.28.5.0/24
                  gateway: 172.28.5.254
                  aux_addresses:
                    host1: 172.28.1.5
                - subnet: "2001:db8:a::/64"
              options:
                foo: bar
        """,
    )
    (attachment,) = spec.networks
    assert attachment.network == NetworkSpec(
        name="demo_front",
        driver="bridge",
        driver_opts={
            "com.docker.network.bridge.name": "br-front",
            "com.docker.network.driver.mtu": "1400",
        },
        internal=True,
        attachable=True,
        enable_ipv6=True,
        labels={"team": "core", "tier": ""},
        ipam=IpamSpec(
            driver="default",
            config=(
                IpamPool(
                    subnet="172.28.0.0/16",
                    ip_range="172.28.5.0/24",
                    gateway="172.28.5.254",
                    aux_addresses={"host1": "172.28.1.5"},
                ),
                IpamPool(subnet="2001:db8:a::/64"),
            ),
            options={"foo": "bar"},
        ),
    )


def test_a_network_definition_change_changes_its_hash(tmp_path: Path) -> None:
    before = NetworkSpec(name="demo_front")
    after = service(tmp_path, "networks: [front]\n", "networks:\n  front:\n    internal: true\n")
    assert after.networks[0].network.definition_hash() != before.definition_hash()
    same = service(tmp_path, "networks: [front]\n", "networks:\n  front: {}\n")
    assert same.networks[0].network.definition_hash() == before.definition_hash()


@pytest.mark.parametrize(
    "body, top, key, message",
    [
        (
            "networks: [back]",
            "networks:\n  front:\n",
            "services.web.networks.back",
            "network 'back' is not declared under the top-level networks"
            " (declared: default, front)",
        ),
        ("networks: front", "", "services.web.networks", "must be a mapping, not str"),
        ("networks: [[front]]", "", "services.web.networks[0]", "must be a string, not a list"),
        (
            "networks: {default: {link_local_ips: [169.254.8.8]}}",
            "",
            "services.web.networks.default.link_local_ips",
            "not supported by Shoal",
        ),
        (
            "networks: {default: {mac_address: '02:42:ac:11:00:02'}}",
            "",
            "services.web.networks.default.mac_address",
            "set the service's mac_address instead",
        ),
        (
            "networks: {default: {ipv4_address: nowhere}}",
            "",
            "services.web.networks.default.ipv4_address",
            "'nowhere' is not an IP address",
        ),
        (
            "networks: {default: {aliases: www}}",
            "",
            "services.web.networks.default.aliases",
            "must be a list, not str",
        ),
        (
            "networks: {default: {priority: high}}",
            "",
            "services.web.networks.default.priority",
            "must be an integer",
        ),
        (
            "networks: {default: [a]}",
            "",
            "services.web.networks.default",
            "must be a mapping, not a list",
        ),
        ("", "networks:\n  front:\n    name: 'bad name'\n", "networks.front", "network name"),
        ("", "networks:\n  front:\n    color: red\n", "networks.front.color", "not supported"),
        ("", "networks:\n  front: [a]\n", "networks.front", "must be a mapping, not a list"),
        ("", "networks: [front]\n", "networks", "must be a mapping, not a list"),
        (
            "",
            "networks:\n  front:\n    external: true\n    driver: bridge\n",
            "networks.front.driver",
            "an external network is defined outside the file",
        ),
        (
            "",
            "networks:\n  front:\n    external: maybe\n",
            "networks.front.external",
            "true or false",
        ),
        (
            "",
            "networks:\n  front:\n    internal: maybe\n",
            "networks.front.internal",
            "true or false",
        ),
        (
            "",
            "networks:\n  front:\n    ipam: {config: [{subnet: nope}]}\n",
            "networks.front.ipam.config[0].subnet",
            "'nope' is not a subnet like 10.5.0.0/16",
        ),
        (
            "",
            "networks:\n  front:\n    ipam: {config: [{gateway: 10.0.0.300}]}\n",
            "networks.front.ipam.config[0].gateway",
            "'10.0.0.300' is not an IP address",
        ),
        (
            "",
            "networks:\n  front:\n    ipam: {config: [{subnet: 10.0.0.0/8, vlan: 3}]}\n",
            "networks.front.ipam.config[0].vlan",
            "not supported by Shoal",
        ),
        (
            "",
            "networks:\n  front:\n    ipam: {config: {subnet: 10.0.0.0/8}}\n",
            "networks.front.ipam.config",
            "must be a list",
        ),
        (
            "",
            "networks:\n  front:\n    ipam: {config: [{aux_addresses: {a: b}}]}\n",
            "networks.front.ipam.config[0].aux_addresses.a",
            "'b' is not an IP address",
        ),
    ],
)
def test_bad_networks(tmp_path: Path, body: str, top: str, key: str, message: str) -> None:
    text = service_error(tmp_path, body + "\n", top)
    assert text.startswith(where(tmp_path, key))
    assert message in text


# --- the project name -----------------------------------------------------------------

PLAIN = "services:\n  web:\n    image: nginx\n"


def test_the_project_name_is_the_folder_name_normalised(tmp_path: Path) -> None:
    project = load(tmp_path / "My Project.v2", PLAIN)
    assert project.project == "myprojectv2"
    assert project.services[0].networks[0].network.name == "myprojectv2_default"
    assert load(tmp_path / "-_Leading", PLAIN).project == "leading"


def test_the_file_name_key_is_the_project_name(tmp_path: Path) -> None:
    project = load(tmp_path / "folder", "name: shop\n" + PLAIN)
    assert project.project == "shop"
    assert project.services[0].networks[0].network.name == "shop_default"
    assert load(tmp_path / "folder", "name: My Shop\n" + PLAIN).project == "myshop"
    assert load(tmp_path / "f", "name: ${P}\n" + PLAIN, environ={"P": "fromenv"}).project == (
        "fromenv"
    )


def test_an_empty_name_key_falls_back_to_the_folder(tmp_path: Path) -> None:
    assert load(tmp_path / "folder", "name: ${UNSET:-}\n" + PLAIN).project == "folder"
    assert load(tmp_path / "folder", "name: ''\n" + PLAIN).project == "folder"


def test_the_project_argument_wins(tmp_path: Path) -> None:
    project = load(tmp_path / "folder", "name: shop\n" + PLAIN, project="staging")
    assert project.project == "staging"
    assert project.services[0].networks[0].network.name == "staging_default"
    assert load(tmp_path / "folder", PLAIN, project="a-b_1").project == "a-b_1"


@pytest.mark.parametrize("name", ["My App", "Shop", "-shop", "shop!", "_x"])
def test_an_invalid_project_argument_is_an_error(tmp_path: Path, name: str) -> None:
    message = error(tmp_path, PLAIN, project=name)
    assert message.startswith(f"{tmp_path / COMPOSE}: invalid project name {name!r}")


def test_an_unusable_name_key_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, "name: '!!!'\n" + PLAIN)
    assert message == where(tmp_path, "name") + "'!!!' is not a usable project name"
    assert error(tmp_path, "name: [a]\n" + PLAIN).startswith(where(tmp_path, "name"))


def test_an_unusable_folder_name_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path / "___", PLAIN)
    assert "the folder's name '___' is not a usable project name" in message
    assert load(tmp_path / "___", PLAIN, project="ok").project == "ok"


# --- secrets and configs ----------------------------------------------------------------

SECRET = "s3cr3t-VALUE-xyz"


def test_a_secret_file_is_read_relative_to_the_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project"
    write(
        folder,
        """\
        name: demo
        services:
          web:
            image: nginx
            secrets: [token, abs]
        secrets:
          token:
            file: ./keys/token.txt
          abs:
            file: ABSOLUTE
        """.replace("ABSOLUTE", str(tmp_path / "abs.txt")),
    )
    (folder / "keys").mkdir()
    (folder / "keys" / "token.txt").write_bytes(b"token\x00bytes\n")
    (tmp_path / "abs.txt").write_text("absolute")
    monkeypatch.chdir(tmp_path)
    project = load_compose(Path("project") / COMPOSE, environ={})
    assert dict(project.values) == {"secret:token": b"token\x00bytes\n", "secret:abs": b"absolute"}
    token, absolute = project.services[0].secrets
    assert token == FileMount(
        kind="secret", name="token", target="/run/secrets/token", digest=token.digest
    )
    assert absolute.target == "/run/secrets/abs"


def test_secret_and_config_sources(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("FROM_DOTENV=dotenv value\n")
    (tmp_path / "site.conf").write_text("conf file")
    project = load(
        tmp_path,
        """\
        name: demo
        services:
          web:
            image: nginx
            secrets: [shell, dotenv]
            configs: [site, site_env, site_file]
        secrets:
          shell: {environment: FROM_SHELL}
          dotenv: {environment: FROM_DOTENV}
        configs:
          site: {content: "port ${PORT}\\n"}
          site_env: {environment: FROM_SHELL}
          site_file: {file: site.conf}
        """,
        environ={"FROM_SHELL": "shell value", "PORT": "80"},
    )
    assert dict(project.values) == {
        "secret:shell": b"shell value",
        "secret:dotenv": b"dotenv value",
        "config:site": b"port 80\n",
        "config:site_env": b"shell value",
        "config:site_file": b"conf file",
    }


def test_external_secrets(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        one_service(
            "secrets: [db_password, api]\n",
            """\
            secrets:
              db_password:
                external: true
              api:
                external: true
                name: api_key_v2
            """,
        ),
    )
    assert dict(project.values) == {}
    assert project.services[0].secrets == (
        FileMount(
            kind="secret", name="db_password", target="/run/secrets/db_password", external=True
        ),
        FileMount(kind="secret", name="api_key_v2", target="/run/secrets/api", external=True),
    )


def test_mount_targets_and_owners(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        secrets:
          - token
          - source: token
            target: other_name
          - source: token
            target: /etc/app/token
            uid: "103"
            gid: 104
            mode: 0400
        configs:
          - site
          - source: site
            target: nginx.conf
          - source: site
            target: /etc/nginx/conf.d/site.conf
            mode: "0640"
        """,
        """\
        secrets:
          token: {environment: TOKEN}
        configs:
          site: {content: server}
        """,
        environ={"TOKEN": "t"},
    )
    assert [(m.kind, m.name, m.target, m.uid, m.gid, oct(m.mode)) for m in spec.secrets] == [
        ("secret", "token", "/run/secrets/token", None, None, "0o444"),
        ("secret", "token", "/run/secrets/other_name", None, None, "0o444"),
        ("secret", "token", "/etc/app/token", "103", "104", "0o400"),
        ("config", "site", "/site", None, None, "0o444"),
        ("config", "site", "/nginx.conf", None, None, "0o444"),
        ("config", "site", "/etc/nginx/conf.d/site.conf", None, None, "0o640"),
    ]
    assert [m.key for m in spec.secrets] == ["secret:token"] * 3 + ["config:site"] * 3


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("0440", 0o440),
        ("'0440'", 0o440),
        ('"440"', 0o440),
        ("0o440", 0o440),
        ("'0o440'", 0o440),
        ("288", 0o440),
        ("0", 0),
        ("0777", 0o777),
        ("0400", 0o400),
    ],
)
def test_a_mode_is_octal_as_compose_reads_it(tmp_path: Path, mode: str, expected: int) -> None:
    spec = service(
        tmp_path,
        f"secrets:\n  - source: token\n    mode: {mode}\n",
        "secrets:\n  token: {environment: TOKEN}\n",
        environ={"TOKEN": "t"},
    )
    assert spec.secrets[0].mode == expected


def test_a_leading_zero_elsewhere_is_still_decimal(tmp_path: Path) -> None:
    spec = service(tmp_path, "environment: {E: 010}\npids_limit: 010\n")
    assert spec.environment == {"E": "10"}
    assert spec.pids_limit == 10


def test_digests_change_with_the_value_only(tmp_path: Path) -> None:
    def digests(folder: Path, value: str) -> tuple[str, str]:
        project = load(
            folder,
            one_service(
                "secrets: [token]\nconfigs: [site]\n",
                "secrets:\n  token: {environment: V}\nconfigs:\n  site: {content: $V}\n",
            ),
            environ={"V": value},
        )
        secret, config = project.services[0].secrets
        return secret.digest, config.digest

    first = digests(tmp_path / "a", "one")
    again = digests(tmp_path / "b", "one")
    other = digests(tmp_path / "c", "two")
    for digest in first + other:
        assert digest.startswith("scrypt:")
        assert "one" not in digest
        assert "two" not in digest
    assert first == again
    assert first[0] != other[0]
    assert first[1] != other[1]
    assert first[0] != first[1]


def test_a_secret_value_never_appears_in_the_project_or_the_specs(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(SECRET)
    project = load(
        tmp_path,
        one_service(
            "secrets: [in_file, in_env]\nconfigs: [inline]\n",
            f"""\
            secrets:
              in_file: {{file: secret.txt}}
              in_env: {{environment: SECRET}}
            configs:
              inline: {{content: {SECRET}}}
            """,
        ),
        environ={"SECRET": SECRET},
    )
    assert set(project.values.values()) == {SECRET.encode()}
    assert SECRET not in repr(project)
    assert SECRET not in str(project)
    assert SECRET not in repr(project.values)
    assert SECRET not in " ".join(project.warnings)
    for spec in project.services:
        assert SECRET not in spec.model_dump_json()
        assert SECRET not in repr(spec)
    assert "secret:in_file" in repr(project.values)


def test_a_secret_may_be_large_but_not_too_large(tmp_path: Path) -> None:
    top = "secrets:\n  big: {file: big.bin}\n"
    (tmp_path / "big.bin").write_bytes(b"x" * MAX_VALUE)
    assert service(tmp_path, "secrets: [big]\n", top).secrets[0].name == "big"
    (tmp_path / "big.bin").write_bytes(b"x" * (MAX_VALUE + 1))
    message = service_error(tmp_path, "secrets: [big]\n", top)
    assert message.startswith(where(tmp_path, "secrets.big"))
    assert f"at most {MAX_VALUE}" in message


@pytest.mark.parametrize(
    "top, key, message",
    [
        ("secrets:\n  token: {}\n", "secrets.token", "give exactly one of file or environment"),
        ("secrets:\n  token:\n", "secrets.token", "must be a mapping, not null"),
        (
            "secrets:\n  token: {file: a, environment: B}\n",
            "secrets.token",
            "give exactly one of file or environment",
        ),
        (
            "configs:\n  site: {}\n",
            "configs.site",
            "give exactly one of file, environment or content",
        ),
        ("secrets:\n  token: {content: x}\n", "secrets.token.content", "not supported by Shoal"),
        ("secrets:\n  token: {file: nope.txt}\n", "secrets.token.file", "nope.txt' not found"),
        (
            "secrets:\n  token: {environment: NOT_SET}\n",
            "secrets.token.environment",
            "variable NOT_SET is not set",
        ),
        (
            "secrets:\n  token: {external: true, file: a}\n",
            "secrets.token.file",
            "an external secret has no value in the file",
        ),
        (
            "configs:\n  site: {external: true}\n",
            "configs.site.external",
            "external configs are not supported by Shoal",
        ),
        ("secrets:\n  token: {external: maybe}\n", "secrets.token.external", "true or false"),
        (
            "secrets:\n  token: {external: true, name: 'bad name'}\n",
            "secrets.token.name",
            "'bad name'",
        ),
        (
            "secrets:\n  token: {environment: T, driver: vault}\n",
            "secrets.token.driver",
            "secret drivers are Swarm's",
        ),
        (
            "configs:\n  site: {content: x, template_driver: golang}\n",
            "configs.site.template_driver",
            "not supported by Shoal",
        ),
        ("secrets:\n  'bad name': {environment: T}\n", "secrets.bad name", "a secret name is"),
        ("secrets: [token]\n", "secrets", "must be a mapping, not a list"),
    ],
)
def test_bad_top_level_secrets_and_configs(
    tmp_path: Path, top: str, key: str, message: str
) -> None:
    text = service_error(tmp_path, "", top, environ={"T": "t"})
    assert text.startswith(where(tmp_path, key))
    assert message in text


@pytest.mark.parametrize(
    "body, key, message",
    [
        (
            "secrets: [nope]",
            "secrets[0]",
            "secret 'nope' is not declared under the top-level secrets",
        ),
        (
            "configs: [token]",
            "configs[0]",
            "config 'token' is not declared under the top-level configs",
        ),
        ("secrets: token", "secrets", "must be a list"),
        ("secrets: [{target: /x}]", "secrets[0].source", "required"),
        ("secrets: [{source: token, path: /x}]", "secrets[0].path", "not supported by Shoal"),
        (
            "secrets: [{source: token, target: /a/../b}]",
            "secrets[0].target",
            "must not contain '..'",
        ),
        ("secrets: [{source: token, target: ../b}]", "secrets[0].target", "must not contain '..'"),
        ("secrets: [{source: token, uid: root}]", "secrets[0]", "String should match pattern"),
        ("secrets: [{source: token, mode: rw}]", "secrets[0].mode", "'rw' is not an octal mode"),
        ("secrets: [{source: token, mode: '0999'}]", "secrets[0].mode", "is not an octal mode"),
        ("secrets: [{source: token, mode: 01000}]", "secrets[0].mode", "0o1000 is not a file mode"),
        ("secrets: [{source: token, mode: 0999}]", "secrets[0].mode", "'0999' is not an octal"),
        ("secrets: [{source: token, mode: 1000}]", "secrets[0].mode", "is not a file mode"),
    ],
)
def test_bad_secret_mounts(tmp_path: Path, body: str, key: str, message: str) -> None:
    top = "secrets:\n  token: {environment: T}\n"
    text = service_error(tmp_path, body + "\n", top, environ={"T": "t"})
    assert text.startswith(where(tmp_path, f"services.web.{key}"))
    assert message in text


# --- profiles -----------------------------------------------------------------------

PROFILES = """\
name: demo
services:
  web:
    image: nginx
  debug:
    image: busybox
    profiles: [debug]
  admin:
    image: adminer
    profiles: [tools, debug]
"""


def test_a_service_in_an_inactive_profile_is_left_out(tmp_path: Path) -> None:
    project = load(tmp_path, PROFILES)
    assert project.names == ["web"]
    assert project.warnings == []


@pytest.mark.parametrize(
    "profiles, names",
    [
        (["debug"], ["web", "debug", "admin"]),
        (["tools"], ["web", "admin"]),
        (["other"], ["web"]),
        (["*"], ["web", "debug", "admin"]),
    ],
)
def test_active_profiles_enable_their_services(
    tmp_path: Path, profiles: list[str], names: list[str]
) -> None:
    assert load(tmp_path, PROFILES, profiles=profiles).names == names


def test_compose_profiles_from_the_environment_or_dot_env(tmp_path: Path) -> None:
    environ = {"COMPOSE_PROFILES": "tools, other"}
    assert load(tmp_path, PROFILES, environ=environ).names == ["web", "admin"]
    assert load(
        tmp_path, PROFILES, environ={"COMPOSE_PROFILES": "debug"}, profiles=["tools"]
    ).names == [
        "web",
        "admin",
    ]
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=debug\n")
    assert load(tmp_path, PROFILES).names == ["web", "debug", "admin"]


def test_a_named_service_is_enabled_whatever_its_profiles(tmp_path: Path) -> None:
    assert load(tmp_path, PROFILES, services=["debug"]).names == ["debug"]
    assert load(tmp_path, PROFILES, services=["web", "admin"]).names == ["web", "admin"]


def test_an_empty_profiles_list_is_no_profile(tmp_path: Path) -> None:
    project = load(tmp_path, "services:\n  web:\n    image: nginx\n    profiles: []\n")
    assert project.names == ["web"]


def test_a_dependency_in_an_inactive_profile_is_dropped_with_a_warning(tmp_path: Path) -> None:
    text = """\
    name: demo
    services:
      web:
        image: nginx
        depends_on:
          db: {condition: service_healthy}
          cache:
            condition: service_completed_successfully
          mail:
      db:
        image: postgres
        profiles: [db]
      cache:
        image: redis
        profiles: [db]
      mail:
        image: mailhog
    """
    project = load(tmp_path, text)
    assert project.names == ["mail", "web"]
    assert project.services[-1].depends_on == ("mail",)
    assert project.tasks == set()
    assert project.warnings == [
        "service web: depends_on db, cache, which is not in an active profile; deploying without it"
    ]
    active = load(tmp_path, text, profiles=["db"])
    assert active.names == ["db", "cache", "mail", "web"]
    assert active.services[-1].depends_on == ("db", "cache", "mail")
    assert active.tasks == {"cache"}
    assert active.warnings == []


def test_every_service_in_an_inactive_profile_is_an_error(tmp_path: Path) -> None:
    text = "services:\n  a:\n    image: nginx\n    profiles: [x]\n"
    message = error(tmp_path, text)
    assert message == where(tmp_path, "services") + (
        "every service is in a profile that is not active (none)"
    )
    assert "(y, z)" in error(tmp_path, text, profiles=["z", "y"])


@pytest.mark.parametrize(
    "value, key, message",
    [
        ("debug", "profiles", "must be a list, not str"),
        ("[[debug]]", "profiles[0]", "must be a string, not a list"),
    ],
)
def test_bad_profiles(tmp_path: Path, value: str, key: str, message: str) -> None:
    text = service_error(tmp_path, f"profiles: {value}\n")
    assert text.startswith(where(tmp_path, f"services.web.{key}"))
    assert message in text


# --- depends_on conditions ----------------------------------------------------------


def test_a_dependency_that_must_complete_is_a_task(tmp_path: Path) -> None:
    project = load(
        tmp_path,
        """\
        name: demo
        services:
          web:
            image: nginx
            depends_on:
              migrate: {condition: service_completed_successfully}
              db: {condition: service_healthy}
              cache: {condition: service_started}
          worker:
            image: app
            depends_on:
              migrate:
                condition: service_completed_successfully
                required: true
          migrate:
            image: app
            depends_on: [db]
          db:
            image: postgres
          cache:
            image: redis
        """,
    )
    assert project.names == ["db", "migrate", "worker", "cache", "web"]
    assert project.tasks == {"migrate"}
    assert project.services[-1].depends_on == ("migrate", "db", "cache")


def test_tasks_among_the_named_services(tmp_path: Path) -> None:
    text = """\
    services:
      web:
        image: nginx
        depends_on: {migrate: {condition: service_completed_successfully}}
      migrate:
        image: app
    """
    assert load(tmp_path, text, services=["web", "migrate"]).tasks == {"migrate"}
    assert load(tmp_path, text, services=["web"]).tasks == set()


def test_the_short_syntax_and_other_conditions_make_no_tasks(tmp_path: Path) -> None:
    text = """\
    services:
      web:
        image: nginx
        depends_on: [db]
      api:
        image: app
        depends_on: {db: {condition: service_healthy}, web: {}}
      db:
        image: postgres
    """
    project = load(tmp_path, text)
    assert project.names == ["db", "web", "api"]
    assert project.tasks == set()


# --- deploy -------------------------------------------------------------------------


def test_deploy_reservations_memory_and_limits_pids(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        deploy:
          resources:
            limits: {memory: 1g, cpus: "0.5", pids: 200}
            reservations: {memory: 256m}
        """,
    )
    assert (spec.mem_limit, spec.cpus, spec.pids_limit, spec.mem_reservation) == (
        1024**3,
        0.5,
        200,
        256 * 1024**2,
    )


def test_deploy_resources_agreeing_with_the_service_keys(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        """\
        mem_reservation: 256m
        pids_limit: 200
        deploy:
          resources:
            limits: {pids: 200}
            reservations: {memory: 268435456}
        """,
    )
    assert (spec.pids_limit, spec.mem_reservation) == (200, 256 * 1024**2)


def test_deploy_reserved_cpus_are_warned_about(tmp_path: Path) -> None:
    project = load(
        tmp_path, one_service("deploy:\n  resources:\n    reservations: {cpus: '0.25'}\n")
    )
    assert project.services[0].cpus is None
    assert project.warnings == [
        "services.web.deploy.resources.reservations.cpus:"
        " Docker reserves no CPU for a single container; ignored"
    ]


@pytest.mark.parametrize(
    "body, restart, attempts",
    [
        ("restart_policy: {condition: none}", "no", None),
        ("restart_policy: {condition: on-failure}", "on-failure", None),
        ("restart_policy: {condition: on-failure, max_attempts: 3}", "on-failure", 3),
        ("restart_policy: {condition: any}", "always", None),
        ("restart_policy: {}", "always", None),
    ],
)
def test_deploy_restart_policy(
    tmp_path: Path, body: str, restart: str, attempts: int | None
) -> None:
    spec = service(tmp_path, f"deploy:\n  {body}\n")
    assert (spec.restart, spec.restart_max_attempts) == (restart, attempts)


def test_deploy_restart_policy_agreeing_with_restart(tmp_path: Path) -> None:
    spec = service(
        tmp_path,
        "restart: on-failure\n"
        "deploy:\n  restart_policy: {condition: on-failure, max_attempts: 2}\n",
    )
    assert (spec.restart, spec.restart_max_attempts) == ("on-failure", 2)


def test_deploy_restart_policy_retries_must_agree_with_restart(tmp_path: Path) -> None:
    policy = "deploy:\n  restart_policy: {condition: on-failure, max_attempts: %s}\n"
    spec = service(tmp_path, "restart: on-failure:3\n" + policy % 3)
    assert (spec.restart, spec.restart_max_attempts) == ("on-failure", 3)
    message = service_error(tmp_path, "restart: on-failure:3\n" + policy % 2)
    assert message == where(tmp_path, "services.web.deploy.restart_policy.max_attempts") + (
        "2 differs from the service's restart: on-failure:3; set one"
    )
    message = service_error(tmp_path, policy % -1)
    assert message == where(tmp_path, "services.web.deploy.restart_policy.max_attempts") + (
        "-1 must not be negative"
    )


def test_deploy_restart_policy_delay_and_window_are_warned_about(tmp_path: Path) -> None:
    project = load(tmp_path, one_service("deploy:\n  restart_policy: {delay: 5s, window: 2m}\n"))
    assert project.services[0].restart == "always"
    assert project.warnings == [
        "services.web.deploy.restart_policy.delay: Docker has no restart delay; ignored",
        "services.web.deploy.restart_policy.window: Docker has no restart window; ignored",
    ]


@pytest.mark.parametrize(
    "body", ["replicas: 1", "replicas: 0", "replicas: '1'", "mode: replicated", "mode: global"]
)
def test_deploy_replicas_of_at_most_one_and_the_modes(tmp_path: Path, body: str) -> None:
    project = load(tmp_path, one_service(f"deploy:\n  {body}\n"))
    assert project.names == ["web"]
    assert project.warnings == []


def test_deploy_labels_are_warned_about_and_not_container_labels(tmp_path: Path) -> None:
    project = load(tmp_path, one_service("labels: {a: '1'}\ndeploy:\n  labels: {b: '2'}\n"))
    assert project.services[0].labels == {"a": "1"}
    assert project.warnings == [
        "services.web.deploy.labels: Swarm service labels are ignored (container labels go"
        " under the service's labels)"
    ]


@pytest.mark.parametrize(
    "body, key, message",
    [
        (
            "mem_reservation: 1g\ndeploy: {resources: {reservations: {memory: 2g}}}",
            "deploy.resources.reservations.memory",
            "'2g' differs from the service's mem_reservation; set one of them",
        ),
        (
            "pids_limit: 5\ndeploy: {resources: {limits: {pids: 6}}}",
            "deploy.resources.limits.pids",
            "6 differs from the service's pids_limit",
        ),
        (
            "deploy: {resources: {reservations: {memory: lots}}}",
            "deploy.resources.reservations.memory",
            "must be a size",
        ),
        (
            "deploy: {resources: {reservations: {cpus: lots}}}",
            "deploy.resources.reservations.cpus",
            "must be a number",
        ),
        (
            "deploy: {resources: {reservations: {generic_resources: []}}}",
            "deploy.resources.reservations.generic_resources",
            "Swarm's generic resources",
        ),
        ("deploy: {resources: {limits: {pids: -2}}}", "pids_limit", "greater than or equal to -1"),
        (
            "deploy: {resources: {limits: {gpus: 1}}}",
            "deploy.resources.limits.gpus",
            "not supported",
        ),
        ("deploy: {resources: {claims: 1}}", "deploy.resources.claims", "not supported"),
        (
            "restart: always\ndeploy: {restart_policy: {condition: none}}",
            "deploy.restart_policy.condition",
            "'none' differs from the service's restart: always; set one",
        ),
        (
            "deploy: {restart_policy: {condition: any, max_attempts: 3}}",
            "deploy.restart_policy.max_attempts",
            "Docker limits retries only for on-failure",
        ),
        (
            "deploy: {restart_policy: {condition: on-failure, max_attempts: x}}",
            "deploy.restart_policy.max_attempts",
            "must be an integer",
        ),
        (
            "deploy: {restart_policy: {delay: soon}}",
            "deploy.restart_policy.delay",
            "must be a duration",
        ),
        ("deploy: {restart_policy: {when: now}}", "deploy.restart_policy.when", "not supported"),
        ("deploy: {restart_policy: any}", "deploy.restart_policy", "must be a mapping, not str"),
        ("deploy: {replicas: some}", "deploy.replicas", "must be an integer"),
        (
            "deploy: {mode: replicated-job}",
            "deploy.mode",
            "'replicated-job': Shoal runs one container",
        ),
        ("deploy: {labels: [=x]}", "deploy.labels[0]", "'=x' has no label name"),
    ],
)
def test_bad_deploy_keys(tmp_path: Path, body: str, key: str, message: str) -> None:
    text = service_error(tmp_path, body + "\n")
    assert text.startswith(where(tmp_path, f"services.web.{key}"))
    assert message in text


# --- restart: on-failure:N ------------------------------------------------------------


@pytest.mark.parametrize(
    "value, restart, attempts",
    [
        ("on-failure:5", "on-failure", 5),
        ("on-failure:0", "on-failure", 0),
        ("always", "always", None),
    ],
)
def test_restart_with_a_retry_limit(
    tmp_path: Path, value: str, restart: str, attempts: int | None
) -> None:
    spec = service(tmp_path, f"restart: {value}\n")
    assert (spec.restart, spec.restart_max_attempts) == (restart, attempts)


# --- build --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build", [".", "{context: ., dockerfile: Dockerfile.prod, args: {A: '1'}}", "./app"]
)
def test_build_with_an_image_deploys_the_image_with_a_warning(tmp_path: Path, build: str) -> None:
    project = load(
        tmp_path, one_service(f"build: {build}\n").replace("nginx", "registry.example/app:1")
    )
    assert project.services[0].image == "registry.example/app:1"
    assert project.warnings == [
        "service web: the build section is ignored; deploying image registry.example/app:1"
    ]


def test_build_without_an_image_names_the_service_and_says_to_add_one(tmp_path: Path) -> None:
    text = "services:\n  web:\n    image: nginx\n  worker:\n    build: ./worker\n"
    message = error(tmp_path, text)
    assert message == where(tmp_path, "services.worker.build") + (
        "Shoal deploys images and does not build them: build and push the image,"
        " then add image: to service worker"
    )


def test_the_image_is_still_required_without_build(tmp_path: Path) -> None:
    message = error(tmp_path, "services:\n  web:\n    command: 'true'\n")
    assert message == where(tmp_path, "services.web.image") + "required"
