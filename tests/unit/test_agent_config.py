"""Agent settings: environment, flags over environment, and refusals (agent/config.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from shoal.agent.cli import EventLoopUnavailable, install_event_loop_policy
from shoal.agent.cli import app as agent_app
from shoal.agent.config import AgentSettings, parse_labels
from shoal.agent.connection import connect_kwargs
from shoal.protocol import RESERVED_LABELS
from tests.conftest import unavailable

AGENT_ENV = (
    "NATS_URL",
    "NATS_CREDS",
    "NATS_NKEY",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "DOCKER_HOST",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the environment the tests run in."""
    for name in list(os.environ):
        if name in AGENT_ENV or name.startswith("SHOAL_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = AgentSettings()
    assert settings.servers == ("nats://127.0.0.1:4222",)
    assert settings.host_id is None
    assert settings.labels == {}
    assert settings.docker_host is None
    assert settings.prefix == "shoal"


def test_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:4222, nats://b:4222,,tls://c:4443")
    monkeypatch.setenv("SHOAL_HOST_ID", "pi-kitchen")
    monkeypatch.setenv("SHOAL_LABELS", "role=web, zone=eu,example.com/tier=gold")
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/docker.sock")
    monkeypatch.setenv("SHOAL_HEARTBEAT_INTERVAL", "2.5")
    monkeypatch.setenv("SHOAL_CONCURRENCY", "3")
    monkeypatch.setenv("NATS_USER", "agent")
    monkeypatch.setenv("NATS_PASSWORD", "s3cret")
    settings = AgentSettings()
    assert settings.servers == ("nats://a:4222", "nats://b:4222", "tls://c:4443")
    assert settings.host_id == "pi-kitchen"
    assert settings.labels == {"role": "web", "zone": "eu", "example.com/tier": "gold"}
    assert settings.docker_host == "unix:///run/user/1000/docker.sock"
    assert settings.heartbeat_interval == 2.5
    assert settings.concurrency == 3
    kwargs = connect_kwargs(settings.nats_options("pi-kitchen"))
    assert kwargs["servers"] == ["nats://a:4222", "nats://b:4222", "tls://c:4443"]
    assert (kwargs["user"], kwargs["password"]) == ("agent", "s3cret")
    assert kwargs["name"] == "shoal-agent:pi-kitchen"


def test_common_variable_names_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the documented names count: a login shell's USER must not become a NATS user."""
    for name, value in {
        "USER": "pi",
        "PASSWORD": "hunter2",
        "TOKEN": "t0ken",
        "SERVERS": "nats://elsewhere:4222",
        "HOST_ID": "someone-else",
        "LABELS": "role=intruder",
        "PREFIX": "other",
        "CONCURRENCY": "1",
        "DOCKER_HOST_": "tcp://nowhere:2375",
    }.items():
        monkeypatch.setenv(name, value)
    settings = AgentSettings()
    assert (settings.user, settings.password, settings.token) == (None, None, None)
    assert settings.servers == ("nats://127.0.0.1:4222",)
    assert settings.host_id is None and settings.labels == {}
    assert settings.prefix == "shoal" and settings.concurrency == 8
    assert "user" not in connect_kwargs(settings.nats_options("h"))


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://env:4222")
    monkeypatch.setenv("SHOAL_HOST_ID", "env-host")
    monkeypatch.setenv("SHOAL_LABELS", "role=web,zone=eu")
    monkeypatch.setenv("DOCKER_HOST", "tcp://env-docker:2375")
    monkeypatch.setenv("SHOAL_HEARTBEAT_INTERVAL", "9")
    options: dict[str, Any] = {
        "servers": "nats://flag-1:4222,nats://flag-2:4222",
        "host_id": "flag-host",
        "labels": ["role=db", "rack=r7"],
        "docker_host": None,  # not given: the environment holds
        "heartbeat_interval": 1.5,
        "creds": None,
        "prefix": None,
    }
    settings = AgentSettings.from_options(options)
    assert settings.servers == ("nats://flag-1:4222", "nats://flag-2:4222")
    assert settings.host_id == "flag-host"
    assert settings.labels == {"role": "db", "rack": "r7"}  # replaced, not merged
    assert settings.docker_host == "tcp://env-docker:2375"
    assert settings.heartbeat_interval == 1.5
    assert settings.creds is None
    assert settings.prefix == "shoal"


def test_paths_from_flags() -> None:
    settings = AgentSettings.from_options(
        {"creds": Path("/etc/shoal/agent.creds"), "tlsca": "/etc/shoal/ca.pem"}
    )
    assert settings.creds == Path("/etc/shoal/agent.creds")
    assert settings.tlsca == Path("/etc/shoal/ca.pem")
    options = settings.nats_options("h")  # connect_kwargs() would read the files
    assert (options.creds, options.tlsca) == (settings.creds, settings.tlsca)


HOSTILE_HOST_IDS = [
    "",
    "a.b",
    "*",
    ">",
    "hosts.>",
    "pi *",
    "pi\tkitchen",
    "pi\n",
    " pi",
    "x" * 65,
    "pi/kitchen",
    "pi:1",
    "ünïcode",
    "pi\x00",
    "$SYS",
]


@pytest.mark.parametrize("host_id", HOSTILE_HOST_IDS)
def test_hostile_host_id_is_rejected(host_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="invalid host id"):
        AgentSettings(host_id=host_id)
    with pytest.raises(ValidationError, match="invalid host id"):
        AgentSettings.from_options({"host_id": host_id})
    if "\x00" not in host_id:  # the environment cannot hold a NUL
        monkeypatch.setenv("SHOAL_HOST_ID", host_id)
        with pytest.raises(ValidationError, match="invalid host id"):
            AgentSettings()


@pytest.mark.parametrize("host_id", ["a", "pi-kitchen", "Host_01", "x" * 64, "-", "_"])
def test_valid_host_ids(host_id: str) -> None:
    assert AgentSettings(host_id=host_id).host_id == host_id


@pytest.mark.parametrize("key", sorted(RESERVED_LABELS))
def test_reserved_label_keys_are_rejected(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"host", "arch", "os", "variant", "kernel"} <= RESERVED_LABELS
    with pytest.raises(ValidationError, match=f"label '{key}' is reserved"):
        AgentSettings(labels=[f"{key}=x"])
    monkeypatch.setenv("SHOAL_LABELS", f"role=web,{key}=x")
    with pytest.raises(ValidationError, match="reserved"):
        AgentSettings()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("role", "not of the form key=value"),
        ("role=web,zone", "'zone' is not of the form key=value"),
        ("=web", "invalid label key ''"),
        ("-role=web", "invalid label key '-role'"),
        ("ro le=web", "invalid label key 'ro le'"),
        ("role=web app", "invalid value 'web app' for label 'role'"),
        ("role=a=b", "invalid value 'a=b' for label 'role'"),
        ("role=" + "x" * 64, "invalid value"),
        ("k" * 129 + "=v", "invalid label key"),
        ("role=web;rm -rf", "invalid value"),
    ],
)
def test_malformed_labels_are_rejected(labels: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_labels(labels)
    with pytest.raises(ValidationError, match=message):
        AgentSettings(labels=labels)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", {}),
        (None, {}),
        ("role=web,,zone=eu,", {"role": "web", "zone": "eu"}),
        (["role=web", "empty="], {"role": "web", "empty": ""}),
        ({"role": "web"}, {"role": "web"}),
        ("role=web,role=db", {"role": "db"}),  # the last one wins
    ],
)
def test_label_forms(value: Any, expected: dict[str, str]) -> None:
    assert parse_labels(value) == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prefix", "shoal.*"),
        ("prefix", "a..b"),
        ("prefix", ""),
        ("heartbeat_interval", 0),
        ("concurrency", 0),
        ("queue_limit", -1),
    ],
)
def test_other_bad_values_are_rejected(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        AgentSettings.from_options({field: value})


def test_nats_options_check_the_connection_settings() -> None:
    with pytest.raises(ValidationError, match="a password needs a user"):
        AgentSettings.from_options({"password": "s3cret"}).nats_options("h")
    with pytest.raises(ValidationError, match="unsupported NATS URL scheme"):
        AgentSettings.from_options({"servers": "http://nats:4222"}).nats_options("h")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"servers": "http://nats:4222"}, "unsupported NATS URL scheme"),
        ({"password": "s3cret"}, "a password needs a user"),
        ({"tlscert": "/etc/shoal/agent.pem"}, "--tlscert and --tlskey go together"),
    ],
)
def test_bad_nats_settings_are_refused_with_the_settings(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        AgentSettings.from_options(options)


# --- the event loop ------------------------------------------------------------


@pytest.fixture
def default_loop_policy() -> Iterator[None]:
    """Whatever a test installs, the next one starts on asyncio's own policy."""
    yield
    asyncio.set_event_loop_policy(None)


def test_event_loop_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AgentSettings().event_loop == "auto"
    monkeypatch.setenv("SHOAL_EVENT_LOOP", " AsyncIO ")
    assert AgentSettings().event_loop == "asyncio"
    assert AgentSettings.from_options({"event_loop": "uvloop"}).event_loop == "uvloop"
    with pytest.raises(ValidationError, match="event_loop"):
        AgentSettings.from_options({"event_loop": "trio"})


def test_asyncio_loop_never_loads_uvloop(
    monkeypatch: pytest.MonkeyPatch, default_loop_policy: None
) -> None:
    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    assert install_event_loop_policy("asyncio") == "asyncio"
    assert "uvloop" not in sys.modules
    assert type(asyncio.get_event_loop_policy()) is asyncio.DefaultEventLoopPolicy


def test_auto_takes_uvloop_when_installed(default_loop_policy: None) -> None:
    try:
        import uvloop
    except ImportError:
        unavailable("uvloop is not installed (the 'uvloop' extra)")
    assert install_event_loop_policy("auto") == "uvloop"
    assert isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch, default_loop_policy: None
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if not installed: import fails
    assert install_event_loop_policy("auto") == "asyncio"
    assert type(asyncio.get_event_loop_policy()) is asyncio.DefaultEventLoopPolicy
    with pytest.raises(EventLoopUnavailable, match="uvloop is not installed"):
        install_event_loop_policy("uvloop")
    result = CliRunner().invoke(agent_app, ["--event-loop", "uvloop", "--insecure"])
    assert result.exit_code == 2
    assert "uvloop is not installed" in result.output
    result = CliRunner().invoke(agent_app, ["--event-loop", "trio"])
    assert result.exit_code == 2
    assert "event_loop" in result.output
