"""The real engine: the Docker Engine API through the Docker SDK.

Every Docker SDK call of the agent lives in this package, split by resource.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import docker
import docker.errors

from agent.docker import disk
from agent.docker.containers import list_containers
from agent.docker.system import engine_info, ping_engine
from agent.engine import DiskSnapshot, EngineInfo
from protocol import ContainerSummary, DockerUnavailable, PsArgs

T = TypeVar("T")


class DockerEngine:
    """An :class:`agent.engine.Engine` backed by a Docker engine.

    The SDK client is created lazily and recreated after the engine was
    unreachable, so an agent started before its engine (or outliving an engine
    restart) serves again without a restart of its own.
    """

    def __init__(self, base_url: str | None = None, *, timeout: float = 30.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    def _get_client(self) -> docker.DockerClient:
        with self._lock:
            if self._client is None:
                try:
                    # from_env keeps DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for tcp:// engines.
                    environment = dict(os.environ)
                    if self.base_url:
                        environment["DOCKER_HOST"] = self.base_url
                    client = docker.from_env(
                        version="auto", timeout=int(self.timeout), environment=environment
                    )
                except docker.errors.DockerException as exc:
                    where = self.base_url or os.environ.get("DOCKER_HOST") or "the local socket"
                    raise DockerUnavailable(
                        f"the Docker engine at {where} is unreachable",
                        detail={"reason": str(exc)},
                    ) from exc
                self._client = client
            return self._client

    def _reset(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _call(self, fn: Callable[[docker.DockerClient], T]) -> T:
        try:
            return fn(self._get_client())
        except DockerUnavailable:
            self._reset()
            raise

    def info(self) -> EngineInfo:
        return self._call(engine_info)

    def ping(self) -> None:
        self._call(ping_engine)

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]:
        return self._call(lambda client: list_containers(client, args))

    def disk_snapshot(self) -> DiskSnapshot:
        return self._call(disk.disk_snapshot)

    def remove_container(self, container_id: str) -> None:
        self._call(lambda client: disk.remove_container(client, container_id))

    def remove_image(self, ref: str) -> None:
        self._call(lambda client: disk.remove_image(client, ref))

    def remove_volume(self, name: str) -> None:
        self._call(lambda client: disk.remove_volume(client, name))

    def remove_network(self, network_id: str) -> None:
        self._call(lambda client: disk.remove_network(client, network_id))

    def prune_build_cache(self, until: float | None) -> tuple[int, int]:
        return self._call(lambda client: disk.prune_build_cache(client, until))

    def close(self) -> None:
        self._reset()


__all__ = ["DockerEngine"]
