"""The agent's self-upgrade: finding its container, the new image, the new container's settings."""

from __future__ import annotations

from typing import Any

import pytest

from shoal.agent.docker.upgrade import own_container_id, replacement, with_version
from shoal.protocol import UpgradeArgs

OLD_ID = "a" * 64
MOUNTINFO = (
    "600 590 0:50 / / rw,relatime - overlay overlay rw\n"
    f"612 590 8:1 /var/lib/docker/containers/{OLD_ID}/hostname /etc/hostname rw - ext4 /dev/sda1\n"
)


def test_the_container_is_found_by_its_mounted_files_then_the_cgroup() -> None:
    assert own_container_id(MOUNTINFO, "", env={}) == OLD_ID
    cgroup = f"0::/system.slice/docker-{'b' * 64}.scope\n"
    assert own_container_id("", cgroup, env={}) == "b" * 64
    assert own_container_id("", "0::/init.scope\n", env={}) is None  # not in a container
    assert own_container_id("", "", env={"SHOAL_CONTAINER_ID": "c" * 64}) == "c" * 64
    assert own_container_id("", "", env={"SHOAL_CONTAINER_ID": "../../x"}) is None


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("shoal-agent:0.1.0", "shoal-agent:0.2.0"),
        ("registry.example:5000/ops/shoal-agent", "registry.example:5000/ops/shoal-agent:0.2.0"),
        ("registry.example:5000/shoal-agent:0.1.0@sha256:" + "0" * 64,
         "registry.example:5000/shoal-agent:0.2.0"),
    ],
)  # fmt: skip
def test_a_version_becomes_the_tag_of_the_agent_image(image: str, expected: str) -> None:
    assert with_version(image, "0.2.0") == expected


def test_upgrade_args_need_an_image_or_a_version() -> None:
    with pytest.raises(ValueError, match="image, the new version"):
        UpgradeArgs()
    with pytest.raises(ValueError):
        UpgradeArgs(version="0.2.0; rm -rf /")
    assert UpgradeArgs(version="0.2.0").deadline == 120


def old_container(**config: Any) -> dict[str, Any]:
    return {
        "Id": OLD_ID,
        "Name": "/shoal-agent",
        "Image": "sha256:old",
        "Config": {
            "Hostname": OLD_ID[:12],
            "Image": "shoal-agent:0.1.0",
            "Env": ["PATH=/opt/shoal/bin:/usr/bin", "NATS_URL=nats://hub:4222", "SHOAL_HOST_ID=h1"],
            "Labels": {"org.opencontainers.image.title": "shoal-agent", "com.example": "mine"},
            "Cmd": None,
            "Entrypoint": ["tini", "--", "shoal-agent"],
            "Healthcheck": {"Test": ["CMD", "shoal-agent", "--check-health"]},
            "StopTimeout": 30,
            **config,
        },
        "HostConfig": {
            "Binds": ["/var/run/docker.sock:/var/run/docker.sock", "/etc/shoal:/etc/shoal:ro"],
            "NetworkMode": "agents",
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        },
        "Mounts": [
            {"Type": "bind", "Source": "/etc/shoal", "Destination": "/etc/shoal"},
            {"Type": "volume", "Name": "f00d", "Destination": "/var/lib/shoal"},
        ],
        "NetworkSettings": {
            "Networks": {"agents": {"Aliases": [OLD_ID[:12], "agent"]}, "other": {"Aliases": None}}
        },
    }


OLD_IMAGE = {
    "Config": {
        "Env": ["PATH=/opt/shoal/bin:/usr/bin"],
        "Labels": {"org.opencontainers.image.title": "shoal-agent"},
        "Entrypoint": ["tini", "--", "shoal-agent"],
        "Healthcheck": {"Test": ["CMD", "shoal-agent", "--check-health"]},
    }
}


def test_the_new_container_keeps_what_was_set_over_the_old_image() -> None:
    kwargs = replacement(old_container(), OLD_IMAGE, "shoal-agent:0.2.0")
    assert kwargs["image"] == "shoal-agent:0.2.0"
    # The old image's own environment and labels are not carried over; the operator's are.
    assert kwargs["environment"] == ["NATS_URL=nats://hub:4222", "SHOAL_HOST_ID=h1"]
    assert kwargs["labels"] == {"com.example": "mine"}
    # The new image's entrypoint and health check, as the old image set them.
    assert "entrypoint" not in kwargs and "healthcheck" not in kwargs and "command" not in kwargs
    assert "hostname" not in kwargs  # the engine's default (the short id) is not copied
    assert kwargs["stop_timeout"] == 30
    host = kwargs["host_config"]
    assert host["Binds"][0] == "/var/run/docker.sock:/var/run/docker.sock"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    # The anonymous state volume is mounted again: the journal is kept.
    assert host["Mounts"] == [{"Type": "volume", "Source": "f00d", "Target": "/var/lib/shoal"}]
    # The first network at create, with the aliases less the old short id.
    assert kwargs["networking_config"] == {"EndpointsConfig": {"agents": {"Aliases": ["agent"]}}}


def test_a_command_and_hostname_the_operator_set_are_kept() -> None:
    old = old_container(Cmd=["--log-level", "debug"], Hostname="board-7")
    kwargs = replacement(old, OLD_IMAGE, "shoal-agent:0.2.0")
    assert kwargs["command"] == ["--log-level", "debug"] and kwargs["hostname"] == "board-7"
    old["HostConfig"]["NetworkMode"] = "host"
    assert "networking_config" not in replacement(old, OLD_IMAGE, "shoal-agent:0.2.0")
