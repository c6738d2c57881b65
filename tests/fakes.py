"""Fakes at seams Shoal owns, for fast tests of logic.

:class:`FakeEngine` is an in-memory :class:`agent.engine.Engine`: the interface the
agent owns between its runtime and a container engine. It lets tests drive the
agent's request handling (validation, refusals, concurrency, shutdown) against a
real NATS server without a Docker engine.

It is a fake, not a model of Docker: it returns canned containers and approximates
``ps`` filters. Whatever users rely on from the engine itself (what Docker lists,
how it fails) is proven against real engines in the integration tests instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from shoal.agent.engine import EngineInfo
from shoal.protocol import ContainerSummary, DockerError, DockerUnavailable, PsArgs

FAKE_INFO = EngineInfo(
    name="fake-engine",
    version="27.0.0-fake",
    api_version="1.47",
    os="linux",
    kernel="6.1.0-fake",
    arch="x86_64",
)

HOLD_LIMIT = 10.0
"""Longest a held call blocks, so that a failing test never leaves a thread stuck."""


def make_container(
    name: str,
    *,
    state: str = "running",
    image: str = "busybox:latest",
    labels: dict[str, str] | None = None,
    container_id: str | None = None,
) -> ContainerSummary:
    """A canned container summary, as the engine would list it."""
    return ContainerSummary(
        id=container_id or (name.encode().hex() + "0" * 64)[:64],
        name=name,
        image=image,
        command="sleep 3600",
        created=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        state=state,
        status="Up 1 hour" if state == "running" else "Exited (0) 1 hour ago",
        labels=dict(labels or {}),
    )


class FakeEngine:
    """An in-memory engine for tests of the agent's logic (a fake at our own seam).

    * ``containers``: what ``list_containers`` returns (``ps`` filters approximated:
      ``all``, name substring, label ``k``/``k=v``, status, exact image).
    * ``reachable``: when False every call raises :class:`protocol.DockerUnavailable`,
      like an engine whose socket is gone. Tests may flip it at any time.
    * ``delay``: seconds every call sleeps first (a slow engine).
    * :meth:`hold` / :meth:`release`: while held, ``list_containers`` blocks (in the
      agent's thread pool) until released, at most :data:`HOLD_LIMIT` seconds;
      :meth:`wait_active` waits until a number of calls are blocked inside it.

    Every call is recorded in ``calls``, by method name.
    """

    def __init__(
        self,
        containers: Iterable[ContainerSummary] = (),
        *,
        reachable: bool = True,
        delay: float = 0.0,
        info: EngineInfo = FAKE_INFO,
        disk_snapshot: Any = None,
    ) -> None:
        self.containers = list(containers)
        self.reachable = reachable
        self.delay = delay
        self.engine_info = info
        self.snapshot = disk_snapshot
        self.calls: list[str] = []
        self.removed: list[tuple[str, str]] = []
        self.closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._gate = threading.Event()
        self._gate.set()
        self._active = 0

    # --- test controls -------------------------------------------------------------

    def hold(self) -> None:
        """Make ``list_containers`` block until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def active(self) -> int:
        """Calls of ``list_containers`` currently inside the engine."""
        with self._lock:
            return self._active

    def wait_active(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``count`` calls are inside ``list_containers``; False on timeout.

        Blocking: from async code, call it with ``asyncio.to_thread``.
        """
        with self._changed:
            return self._changed.wait_for(lambda: self._active >= count, timeout=timeout)

    # --- the Engine interface ------------------------------------------------------

    def _enter(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)
        if self.delay:
            time.sleep(self.delay)
        if not self.reachable:
            raise DockerUnavailable("fake engine: cannot connect to the Docker daemon")

    def info(self) -> EngineInfo:
        self._enter("info")
        return self.engine_info

    def ping(self) -> None:
        self._enter("ping")

    def service_containers(self, service: str | None) -> list[Any]:
        """No deployed services (heartbeats ask for them; not counted as a call)."""
        if not self.reachable:
            raise DockerUnavailable("fake engine: cannot connect to the Docker daemon")
        return []

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]:
        self._enter("list_containers")
        with self._changed:
            self._active += 1
            self._changed.notify_all()
        try:
            self._gate.wait(HOLD_LIMIT)
        finally:
            with self._changed:
                self._active -= 1
                self._changed.notify_all()
        if not self.reachable:  # lost while we were waiting
            raise DockerUnavailable("fake engine: cannot connect to the Docker daemon")
        return [c for c in self.containers if _selected(c, args)]

    def disk_snapshot(self) -> Any:
        self._enter("disk_snapshot")
        if self.snapshot is None:
            raise DockerError("fake engine: no disk snapshot was given")
        return self.snapshot

    def remove_container(
        self, container_id: str, *, force: bool = False, volumes: bool = False
    ) -> None:
        self._remove("container", container_id)

    def remove_image(self, ref: str) -> None:
        self._remove("image", ref)

    def remove_volume(self, name: str) -> None:
        self._remove("volume", name)

    def remove_network(self, network_id: str) -> None:
        self._remove("network", network_id)

    def prune_build_cache(self, until: float | None) -> tuple[int, int]:
        self._enter("prune_build_cache")
        return 0, 0

    def _remove(self, kind: str, ref: str) -> None:
        self._enter(f"remove_{kind}")
        with self._lock:
            self.removed.append((kind, ref))

    def close(self) -> None:
        """Closing releases held calls, as closing a client would end its requests."""
        self.closed = True
        self._gate.set()


def _selected(container: ContainerSummary, args: PsArgs) -> bool:
    if not args.all and container.state != "running":
        return False
    if args.name and not any(n in container.name for n in args.name):
        return False
    for spec in args.label:
        key, sep, value = spec.partition("=")
        if key not in container.labels or (sep and container.labels[key] != value):
            return False
    if args.status and container.state not in args.status:
        return False
    return not args.image or container.image in args.image
