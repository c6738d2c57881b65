"""The agent's deploy policy: loading, defaults, and every rule (agent/policy.py)."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.agent.policy import (
    Policy,
    PolicyDenied,
    PolicyError,
    canonical_host_path,
    check_image,
    check_service,
    load_policy,
    normalize_capability,
    parse_policy,
    service_denials,
)
from shoal.protocol.errors import ErrorCode, ShoalError
from shoal.protocol.service import ServiceSpec, VolumeSpec

EXAMPLE = """
[images]
allow = ["registry.example.com/*", "127.0.0.1:*/*"]

[containers]
privileged = true
host_network = true
host_pid = true
host_ipc = true
share_namespaces = true
devices = ["/dev/ttyUSB*"]
capabilities = ["net_admin", "CAP_SYS_TIME"]
security_opt = ["apparmor=*"]
bind_mounts = ["/srv/app/*", "/var/log/"]
"""


def spec(**fields: Any) -> ServiceSpec:
    fields.setdefault("image", "registry.example.com/team/web:1.2")
    return ServiceSpec(name="web", **fields)


def bind(source: str) -> VolumeSpec:
    return VolumeSpec(type="bind", source=source, target="/data")


def policy(**containers: Any) -> Policy:
    return Policy.model_validate({"containers": containers})


def denied(pol: Policy, service: ServiceSpec) -> PolicyDenied:
    with pytest.raises(PolicyDenied) as info:
        check_service(pol, service)
    return info.value


# --- loading -----------------------------------------------------------------------


def test_load_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(EXAMPLE, encoding="utf-8")
    pol = load_policy(path)
    assert pol.images.allow == ("registry.example.com/*", "127.0.0.1:*/*")
    c = pol.containers
    assert (c.privileged, c.host_network, c.host_pid, c.host_ipc, c.share_namespaces) == (
        True,
        True,
        True,
        True,
        True,
    )
    assert c.devices == ("/dev/ttyUSB*",)
    assert c.capabilities == ("NET_ADMIN", "SYS_TIME")
    assert c.security_opt == ("apparmor=*",)
    assert c.bind_mounts == ("/srv/app/*", "/var/log")


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("", encoding="utf-8")
    assert load_policy(path) == Policy.default()


def test_default_policy_is_secure_but_allows_any_image() -> None:
    pol = Policy.default()
    assert pol.images.allow is None
    c = pol.containers
    assert not (c.privileged or c.host_network or c.host_pid or c.host_ipc or c.share_namespaces)
    assert c.devices == c.capabilities == c.security_opt == c.bind_mounts == ()
    check_service(pol, spec(image="anything.example/x/y:latest"))
    check_image(pol, "nginx")
    assert "any image" in pol.summary()
    assert "no container privileges" in pol.summary()


def test_summary_names_what_is_allowed(tmp_path: Path) -> None:
    summary = parse_policy(EXAMPLE).summary()
    assert "2 image pattern(s)" in summary
    assert "privileged" in summary and "1 bind_mounts" not in summary
    assert "2 bind_mounts" in summary


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match=r"cannot read policy file .*nope\.toml"):
        load_policy(path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"[images]\nallow = ['\xff']\n")
    with pytest.raises(PolicyError, match=r"policy\.toml"):
        load_policy(path)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[containers\nprivileged = true\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"policy\.toml: not valid TOML"):
        load_policy(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[containers]\nhostnetwork = true\n", "containers.hostnetwork"),
        ("[container]\nprivileged = true\n", "container"),
        ("[images]\nallowed = ['x']\n", "images.allowed"),
        ("version = 2\n", "version"),
    ],
)
def test_unknown_keys_are_refused(text: str, field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.toml")
    assert str(info.value).startswith("p.toml: ")
    assert field in str(info.value)
    assert "Extra inputs are not permitted" in str(info.value)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('[containers]\nprivileged = "yes"\n', "containers.privileged"),
        ("[containers]\nhost_network = 1\n", "containers.host_network"),
        ('[containers]\nhost_pid = "true"\n', "containers.host_pid"),
        ('[containers]\ndevices = "/dev/x"\n', "containers.devices"),
        ("[containers]\nbind_mounts = [1]\n", "containers.bind_mounts"),
        ('[images]\nallow = "registry.example.com/*"\n', "images.allow"),
        ("images = 3\n", "images"),
    ],
)
def test_wrong_types_are_refused(text: str, field: str) -> None:
    with pytest.raises(PolicyError, match=rf"p\.toml: {field}"):
        parse_policy(text, "p.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[images]\nallow = []\n", "empty list would refuse every image"),
        ('[images]\nallow = [""]\n', "1 to 1024 characters"),
        ('[images]\nallow = [" nginx"]\n', "white space"),
        ('[images]\nallow = ["ngi\\u0000nx"]\n', "control characters"),
        ('[containers]\nbind_mounts = ["srv/*"]\n', "relative path"),
        ('[containers]\nbind_mounts = ["/srv/../etc"]\n', "'..' component"),
        ('[containers]\nbind_mounts = ["/srv/\\n"]\n', "control characters"),
        ('[containers]\ndevices = ["ttyUSB0"]\n', "relative path"),
        ('[containers]\ncapabilities = ["SYS ADMIN"]\n', "not a capability name"),
        ('[containers]\ncapabilities = ["CAP_"]\n', "not a capability name"),
        ('[containers]\nsecurity_opt = ["seccomp=\\t"]\n', "control characters"),
    ],
)
def test_invalid_patterns_are_refused(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(text)


def test_too_many_patterns() -> None:
    items = ", ".join(f'"/srv/{i}"' for i in range(300))
    with pytest.raises(PolicyError, match="at most 256"):
        parse_policy(f"[containers]\nbind_mounts = [{items}]\n")


def test_policy_denied_is_a_shoal_error_with_its_code() -> None:
    exc = PolicyDenied("no")
    assert isinstance(exc, ShoalError)
    assert exc.code is ErrorCode.POLICY_DENIED
    assert str(exc.code) == "policy_denied"


# --- images ------------------------------------------------------------------------


IMAGE_POLICY = parse_policy(
    '[images]\nallow = ["registry.example.com/*", "127.0.0.1:*/*", "busybox:1.36"]\n'
)


@pytest.mark.parametrize(
    "image",
    [
        "registry.example.com/web",
        "registry.example.com/team/web:1.2",
        "registry.example.com/web@sha256:" + "a" * 64,
        "127.0.0.1:5000/busybox",
        "127.0.0.1:5000/team/busybox:latest",
        "busybox:1.36",
    ],
)
def test_allowed_images(image: str) -> None:
    check_image(IMAGE_POLICY, image)
    check_service(IMAGE_POLICY, spec(image=image))


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "busybox",  # the tag is part of the reference
        "busybox:1.37",
        "library/busybox:1.36",  # globs match the reference as sent
        "registry.example.com.evil.example/web",
        "evil.example/registry.example.com/web",
        "Registry.example.com/web",  # case-sensitive: a false refusal is the safe side
        "127.0.0.2:5000/busybox",
        "localhost:5000/busybox",
    ],
)
def test_denied_images(image: str) -> None:
    with pytest.raises(PolicyDenied) as info:
        check_image(IMAGE_POLICY, image)
    assert "images.allow" in info.value.message
    assert info.value.detail == {"rule": "images.allow", "value": image}
    assert denied(IMAGE_POLICY, spec(image=image)).detail["rule"] == "images.allow"


def test_image_with_control_characters_is_denied_even_by_star() -> None:
    pol = parse_policy('[images]\nallow = ["*"]\n')
    check_image(pol, "anything/at:all")
    with pytest.raises(PolicyDenied):
        check_image(pol, "nginx\n")


def test_registry_port_glob_needs_the_port() -> None:
    pol = parse_policy('[images]\nallow = ["registry.example.com:5000/*"]\n')
    check_image(pol, "registry.example.com:5000/app:1")
    for image in ("registry.example.com/app:1", "registry.example.com:5001/app:1"):
        with pytest.raises(PolicyDenied):
            check_image(pol, image)


# --- flags -------------------------------------------------------------------------


def test_privileged() -> None:
    exc = denied(Policy.default(), spec(privileged=True))
    assert exc.message == "policy denies privileged mode (containers.privileged = false)"
    assert exc.detail == {"rule": "containers.privileged", "value": True, "service": "web"}
    check_service(policy(privileged=True), spec(privileged=True))
    check_service(Policy.default(), spec(privileged=False))


@pytest.mark.parametrize(
    ("field", "rule"),
    [
        ("network_mode", "containers.host_network"),
        ("pid", "containers.host_pid"),
        ("ipc", "containers.host_ipc"),
    ],
)
@pytest.mark.parametrize("value", ["host", "HOST", " host"])
def test_host_namespaces(field: str, rule: str, value: str) -> None:
    exc = denied(Policy.default(), spec(**{field: value}))
    assert exc.detail["rule"] == rule
    assert exc.message == f"policy denies {field} {value!r} ({rule} = false)"
    check_service(policy(**{rule.split(".")[1]: True}), spec(**{field: value}))
    # allowing one host namespace does not allow another
    others = {"host_network", "host_pid", "host_ipc"} - {rule.split(".")[1]}
    denied(policy(**dict.fromkeys(others, True)), spec(**{field: value}))


@pytest.mark.parametrize("field", ["network_mode", "pid", "ipc"])
@pytest.mark.parametrize("value", ["container:db", "service:db", "Container:db"])
def test_sharing_another_containers_namespace(field: str, value: str) -> None:
    exc = denied(Policy.default(), spec(**{field: value}))
    assert exc.detail["rule"] == "containers.share_namespaces"
    assert "containers.share_namespaces = false" in exc.message
    check_service(policy(share_namespaces=True), spec(**{field: value}))
    # host_* do not cover sharing a container's namespace
    denied(policy(host_network=True, host_pid=True, host_ipc=True), spec(**{field: value}))


@pytest.mark.parametrize(
    "fields",
    [
        {"network_mode": "bridge"},
        {"network_mode": "none"},
        {"network_mode": "my-net"},
        {"network_mode": "hostile"},
        {"ipc": "private"},
        {"ipc": "shareable"},
        {"ipc": "none"},
        {"pid": None},
    ],
)
def test_ordinary_namespaces_are_allowed(fields: dict[str, Any]) -> None:
    check_service(Policy.default(), spec(**fields))


def test_namespace_value_with_control_characters() -> None:
    exc = denied(Policy.default(), spec(network_mode="br\x00idge"))
    assert exc.detail["rule"] == "containers.host_network"


# --- devices -----------------------------------------------------------------------

DEVICES = policy(devices=["/dev/ttyUSB*", "/dev/snd"])


@pytest.mark.parametrize(
    "device",
    [
        "/dev/ttyUSB0",
        "/dev/ttyUSB1:/dev/ttyUSB0",
        "/dev/ttyUSB0:/dev/x:rw",
        "/dev/snd",
        "//dev/snd",
    ],
)
def test_allowed_devices(device: str) -> None:
    check_service(DEVICES, spec(devices=(device,)))


@pytest.mark.parametrize(
    "device",
    [
        "/dev/sda",
        "/dev/sda:/dev/ttyUSB0",  # the host side is what counts
        "/dev/snd/controlC0",  # no '*': the listed path only
        "/dev/ttyUSB0/../sda",
        "/dev/../dev/sda",
        "dev/ttyUSB0",
        "",
        "/dev/ttyUSB0:/x:rw:extra",
        "/dev/ttyUSB0:/dev/x\n:rw",
        "vendor.example/gpu=all",
    ],
)
def test_denied_devices(device: str) -> None:
    exc = denied(DEVICES, spec(devices=(device,)))
    assert exc.detail["rule"] == "containers.devices"
    assert "policy denies device" in exc.message


def test_no_devices_by_default() -> None:
    exc = denied(Policy.default(), spec(devices=("/dev/ttyUSB0",)))
    assert exc.message == "policy denies device '/dev/ttyUSB0' (not in containers.devices)"


# --- capabilities ------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", "cap_net_admin"])
def test_capability_case_and_prefix(cap: str) -> None:
    check_service(policy(capabilities=["net_admin"]), spec(cap_add=(cap,)))
    check_service(policy(capabilities=["CAP_NET_ADMIN"]), spec(cap_add=(cap,)))


@pytest.mark.parametrize("cap", ["SYS_ADMIN", "ALL", "all", "NET_ADMIN ", "CAP_", "net-admin"])
def test_denied_capabilities(cap: str) -> None:
    exc = denied(policy(capabilities=["NET_ADMIN"]), spec(cap_add=(cap,)))
    assert exc.detail["rule"] == "containers.capabilities"
    assert "containers.capabilities" in exc.message or "not a capability name" in exc.message


def test_all_in_the_policy_allows_any_capability() -> None:
    check_service(policy(capabilities=["ALL"]), spec(cap_add=("SYS_ADMIN", "all")))


def test_cap_drop_is_never_refused() -> None:
    check_service(Policy.default(), spec(cap_drop=("ALL", "NET_RAW")))


def test_normalize_capability() -> None:
    assert normalize_capability("cap_sys_admin") == "SYS_ADMIN"
    assert normalize_capability("Sys_Admin") == "SYS_ADMIN"
    assert normalize_capability("CAP_") is None
    assert normalize_capability("1ABC") is None


# --- security options --------------------------------------------------------------


def test_security_opt() -> None:
    pol = policy(security_opt=["apparmor=*", "label=type:svirt_apache_t"])
    check_service(pol, spec(security_opt=("apparmor=docker-default", "label=type:svirt_apache_t")))
    for option in ("seccomp=unconfined", "label=disable", "APPARMOR=unconfined"):
        exc = denied(pol, spec(security_opt=(option,)))
        assert exc.detail == {
            "rule": "containers.security_opt",
            "value": option,
            "service": "web",
        }
        assert "not in containers.security_opt" in exc.message


@pytest.mark.parametrize(
    "option", ["no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"]
)
def test_no_new_privileges_is_always_allowed(option: str) -> None:
    check_service(Policy.default(), spec(security_opt=(option,)))


def test_no_new_privileges_false_is_not() -> None:
    denied(Policy.default(), spec(security_opt=("no-new-privileges:false",)))


# --- bind mounts -------------------------------------------------------------------

BINDS = policy(bind_mounts=["/srv/*", "/var/log/app"])


@pytest.mark.parametrize(
    "source",
    [
        "/srv/app",
        "/srv/app/data",
        "/srv//app",
        "/srv/./app/",
        "//srv/app",
        "///srv/app",
        "/var/log/app",
        "/var/log/app/",
    ],
)
def test_allowed_binds(source: str) -> None:
    check_service(BINDS, spec(volumes=(bind(source),)))


@pytest.mark.parametrize(
    "source",
    [
        "/",
        "//",
        "/.",
        "/srv",  # '/srv/*' is what is under /srv, not /srv itself
        "/srv/",
        "/srvx",
        "/srvx/app",
        "/etc",
        "/srv/../etc",
        "/srv/app/../../etc",
        "/srv/app/..",
        "/srv/..",
        "/srv/app/../data",  # '..' is refused even when it would stay inside
        "/var/log/app/../../../etc",
        "/var/log/application",
        "/var/log/app/sub",  # no '*': the listed path only
        "/var/log",
        "srv/app",
        "./srv/app",
        "~/srv",
        "/srv/app\n",
        "/srv/app\x00/x",
        "/srv/a\x7fb",
    ],
)
def test_denied_binds(source: str) -> None:
    exc = denied(BINDS, spec(volumes=(bind(source),)))
    assert exc.detail["rule"] == "containers.bind_mounts"
    assert exc.detail["value"] == source
    assert "policy denies bind mount of" in exc.message


def test_bind_denial_message_names_the_rule_and_canonical_path() -> None:
    exc = denied(Policy.default(), spec(volumes=(bind("/etc//ssl/"),)))
    assert exc.message == "policy denies bind mount of '/etc/ssl' (not in containers.bind_mounts)"


def test_root_only_when_literally_listed() -> None:
    for patterns in (["/*"], ["/**"], ["/?*"], ["//*"], ["/[!x]*"]):
        denied(policy(bind_mounts=patterns), spec(volumes=(bind("/"),)))
    check_service(policy(bind_mounts=["/"]), spec(volumes=(bind("/"),)))
    check_service(policy(bind_mounts=["//"]), spec(volumes=(bind("//"),)))
    # '/*' still allows what is under /
    check_service(policy(bind_mounts=["/*"]), spec(volumes=(bind("/etc"),)))


def test_named_volumes_need_no_bind_rule() -> None:
    volume = VolumeSpec(type="volume", source="app-data", target="/data")
    check_service(Policy.default(), spec(volumes=(volume,)))


@pytest.mark.parametrize("source", ["/etc", "./data", "../data", "a/b", "~", "x\ny"])
def test_path_like_volume_names_are_denied(source: str) -> None:
    volume = VolumeSpec(type="volume", source=source, target="/data")
    exc = denied(BINDS, spec(volumes=(volume,)))
    assert exc.detail["rule"] == "containers.bind_mounts"


def test_canonical_host_path() -> None:
    assert canonical_host_path("//srv//a/./b/") == "/srv/a/b"
    assert canonical_host_path("/") == "/"
    for bad in ("", "a", "/a/../b", "/..", "/a\tb"):
        with pytest.raises(ValueError):
            canonical_host_path(bad)


SEGMENT = st.sampled_from(["srv", "app", "data", "etc", "..", ".", "", "srvx", "x"])


@settings(max_examples=500, deadline=None, database=None)
@given(st.lists(SEGMENT, min_size=1, max_size=8))
def test_dotdot_escaping_the_allowed_prefix_is_always_denied(segments: list[str]) -> None:
    source = "/" + "/".join(segments)
    pol = policy(bind_mounts=["/srv/app/*"])
    # POSIX normpath keeps exactly two leading slashes; the policy treats them as one.
    lexical = "/" + posixpath.normpath(source).lstrip("/")
    escapes = not lexical.startswith("/srv/app/")
    if ".." in segments or escapes:
        exc = denied(pol, spec(volumes=(bind(source),)))
        assert exc.detail["rule"] == "containers.bind_mounts"
    else:
        check_service(pol, spec(volumes=(bind(source),)))


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(min_size=1, max_size=40))
def test_any_allowed_bind_is_under_the_prefix(source: str) -> None:
    pol = policy(bind_mounts=["/srv/app/*"])
    try:
        check_service(pol, spec(volumes=(bind(source),)))
    except PolicyDenied:
        return
    assert source.startswith("/")
    assert ".." not in source.split("/")
    assert all(ord(c) >= 32 and ord(c) != 127 for c in source)
    assert posixpath.normpath("/" + source.lstrip("/")).startswith("/srv/app/")


# --- several denials ----------------------------------------------------------------


def test_every_denial_is_listed() -> None:
    service = spec(
        image="nginx",
        privileged=True,
        network_mode="host",
        cap_add=("SYS_ADMIN",),
        volumes=(bind("/etc"),),
    )
    pol = parse_policy('[images]\nallow = ["registry.example.com/*"]\n')
    rules = [d.rule for d in service_denials(pol, service)]
    assert rules == [
        "images.allow",
        "containers.privileged",
        "containers.host_network",
        "containers.capabilities",
        "containers.bind_mounts",
    ]
    exc = denied(pol, service)
    assert exc.message.endswith("(and 4 more)")
    assert exc.detail["rule"] == "images.allow"
    assert [d["rule"] for d in exc.detail["denials"]] == rules


def test_fully_allowed_service() -> None:
    service = spec(
        image="127.0.0.1:5000/app:1",
        privileged=True,
        network_mode="host",
        pid="host",
        ipc="container:db",
        devices=("/dev/ttyUSB3",),
        cap_add=("NET_ADMIN", "cap_sys_time"),
        security_opt=("apparmor=unconfined", "no-new-privileges"),
        volumes=(
            bind("/srv/app/data"),
            bind("/var/log"),
            VolumeSpec(type="volume", source="v", target="/v"),
        ),
    )
    pol = parse_policy(EXAMPLE)
    assert service_denials(pol, service) == []
    check_service(pol, service)
