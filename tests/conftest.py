"""Session-wide real parts: one NATS server, three Docker engines, one registry.

They start once per run and stop at its end; tests stay independent by labelling
what they create with ``shoal-test=<test_label>`` (see the ``test_label`` fixture).
A part that cannot run here skips the tests that need it, except under ``CI=true``,
where that skip is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import settings

from tests.stack import (
    BUSYBOX_IMAGE,
    TEST_LABEL,
    DockerEngine,
    NatsServer,
    Registry,
    StackError,
    build_busybox_image,
    docker_available,
    in_parallel,
    nats_available,
    registry_available,
    remove_labelled,
    remove_tree,
    short_tempdir,
    start_all,
)

# Under CI, property tests are deterministic: a red CI must be reproducible.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

ENGINE_NAMES = ("host-a", "host-b", "host-c")

_ENGINES_KEY = pytest.StashKey[list[DockerEngine]]()
_SERVICES_KEY = pytest.StashKey[list[NatsServer | Registry]]()


def require(reason: str | None) -> None:
    """Skip the test when ``reason`` is set; under ``CI=true`` fail it instead."""
    if reason is not None:
        unavailable(reason)


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a skipped real-part test is a failure)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def _watched(request: pytest.FixtureRequest, part: NatsServer | Registry) -> Iterator[None]:
    """Let ``_restart_stopped_parts`` see ``part`` while the session uses it."""
    watched = request.config.stash.setdefault(_SERVICES_KEY, [])
    watched.append(part)
    try:
        yield
    finally:
        watched.remove(part)


@pytest.fixture(scope="session")
def stack_dir() -> Iterator[Path]:
    """A short temp dir under /tmp for every session part; removed at the end."""
    path = short_tempdir("shoal-")
    try:
        yield path
    finally:
        remove_tree(path)


@pytest.fixture(scope="session")
def nats_server(request: pytest.FixtureRequest, stack_dir: Path) -> Iterator[NatsServer]:
    """A running nats-server with JetStream on 127.0.0.1 (``.url``, ``.port``)."""
    require(nats_available())
    with NatsServer(stack_dir / "nats", jetstream=True) as server, _watched(request, server):
        yield server


@pytest.fixture(scope="session")
def engines(request: pytest.FixtureRequest, stack_dir: Path) -> Iterator[list[DockerEngine]]:
    """Three real dockerd engines ``host-a``, ``host-b``, ``host-c``, each with the
    busybox image ``shoal-test/busybox:latest``. Tests must leave them running."""
    require(docker_available())
    started = [DockerEngine(name, stack_dir / name) for name in ENGINE_NAMES]

    def build_image(engine: DockerEngine) -> None:
        with contextlib.closing(engine.client()) as client:
            build_busybox_image(client, BUSYBOX_IMAGE)

    try:
        start_all(started, then=build_image)
    except BaseException:
        for engine in started:
            engine.cleanup()
        raise
    request.config.stash[_ENGINES_KEY] = started
    try:
        yield started
    finally:
        request.config.stash[_ENGINES_KEY] = []
        _discard_engines(started)


def _discard_engines(engines: list[DockerEngine]) -> None:
    """Remove every container (so dockerd need not stop them), then clean up, in parallel."""

    def discard(engine: DockerEngine) -> None:
        try:
            if engine.running:
                with contextlib.closing(engine.client(timeout=10)) as client:
                    for container in client.containers.list(all=True):
                        container.remove(force=True, v=True)
        finally:
            engine.cleanup()  # even when removing failed

    in_parallel(engines, discard)


@pytest.fixture(scope="session")
def registry(request: pytest.FixtureRequest, stack_dir: Path) -> Iterator[Registry]:
    """A running docker-registry on 127.0.0.1 over plain HTTP (``.address``, ``.ref()``)."""
    require(registry_available())
    with Registry(stack_dir / "registry") as server, _watched(request, server):
        yield server


def _label_value(nodeid: str) -> str:
    name = nodeid.rpartition("::")[2]
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower())[:40].strip("-") or "test"
    return f"{cleaned}-{secrets.token_hex(3)}"


@pytest.fixture
def test_label(request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique value for the ``shoal-test`` label: ``[a-z0-9-]``, so it also fits in
    container names and image repository names.

    Afterwards every container, volume, network and image labelled
    ``shoal-test=<value>`` is removed from every engine of the session (if engines
    were started); an engine the test left stopped is started again first.
    """
    value = _label_value(request.node.nodeid)
    yield value
    errors: list[BaseException] = []
    for engine in request.config.stash.get(_ENGINES_KEY, []):
        try:
            engine.start()  # no-op when running
            with contextlib.closing(engine.client(timeout=30)) as client:
                remove_labelled(client, f"{TEST_LABEL}={value}")
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise StackError(f"cleanup of label {TEST_LABEL}={value} failed: {errors!r}")


@pytest.fixture(autouse=True)
def _restart_stopped_parts(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, start again any session part the test stopped and left down."""
    yield
    parts = [
        *request.config.stash.get(_SERVICES_KEY, []),
        *request.config.stash.get(_ENGINES_KEY, []),
    ]
    down = [part for part in parts if not part.running]
    if down:
        start_all(down)
