"""The real engine: the Docker Engine API through the Docker SDK.

Every Docker SDK call of the agent lives in this package, split by resource.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import docker
import docker.errors

from shoal.protocol import (
    ContainerSummary,
    DockerUnavailable,
    ExecArgs,
    ImageSummary,
    InfoResult,
    LogLine,
    PsArgs,
    RunArgs,
    ServiceSpec,
    StatsResult,
)
from shoal.protocol.service import NetworkSpec

from ..engine import (
    ContainerEventRecord,
    ContainerState,
    DiskSnapshot,
    EngineInfo,
    ExecState,
    ImageInfo,
    PullProgress,
    Stream,
)
from . import containers, execution, images, logs, networks, stats, system, upgrade, volumes

T = TypeVar("T")


class DockerEngine:
    """An :class:`agent.engine.Engine` backed by a Docker engine.

    SDK clients are created lazily and recreated after the engine was
    unreachable, so an agent started before its engine (or outliving an engine
    restart) serves again without a restart of its own. Long operations (pull,
    disk usage, build-cache prune) use a second client with a long read timeout.
    """

    def __init__(
        self, base_url: str | None = None, *, timeout: float = 30.0, long_timeout: float = 600.0
    ) -> None:
        self.base_url = base_url
        self.timeouts = {False: timeout, True: long_timeout}
        self._clients: dict[bool, docker.DockerClient] = {}
        self._lock = threading.Lock()

    def _get_client(self, long: bool) -> docker.DockerClient:
        with self._lock:
            client = self._clients.get(long)
            if client is None:
                try:
                    # from_env keeps DOCKER_TLS_VERIFY and DOCKER_CERT_PATH for tcp:// engines.
                    environment = dict(os.environ)
                    if self.base_url:
                        environment["DOCKER_HOST"] = self.base_url
                    client = docker.from_env(
                        version="auto", timeout=int(self.timeouts[long]), environment=environment
                    )
                except docker.errors.DockerException as exc:
                    where = self.base_url or os.environ.get("DOCKER_HOST") or "the local socket"
                    raise DockerUnavailable(
                        f"the Docker engine at {where} is unreachable",
                        detail={"reason": str(exc)},
                    ) from exc
                self._clients[long] = client
            return client

    def _reset(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _call(self, fn: Callable[[docker.DockerClient], T], *, long: bool = False) -> T:
        try:
            return fn(self._get_client(long))
        except DockerUnavailable:
            self._reset()
            raise

    # --- system -------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        return self._call(system.engine_info)

    def ping(self) -> None:
        self._call(system.ping_engine)

    def engine_details(self) -> InfoResult:
        return self._call(system.engine_details)

    def disk_snapshot(self) -> DiskSnapshot:
        return self._call(system.disk_snapshot, long=True)

    def prune_build_cache(self, until: float | None) -> tuple[int, int]:
        return self._call(lambda client: system.prune_build_cache(client, until), long=True)

    def container_events(self, since: float | None) -> Stream[ContainerEventRecord]:
        return self._call(lambda client: system.container_events(client, since))

    def past_container_events(self, since: float, until: float) -> list[ContainerEventRecord]:
        return self._call(lambda client: system.past_container_events(client, since, until))

    def close(self) -> None:
        self._reset()

    # --- containers ---------------------------------------------------------------------

    def list_containers(self, args: PsArgs) -> list[ContainerSummary]:
        return self._call(lambda client: containers.list_containers(client, args))

    def create_service_container(
        self,
        spec: ServiceSpec,
        name: str,
        labels: dict[str, str],
        files: Mapping[str, str] | None = None,
    ) -> str:
        return self._call(
            lambda c: containers.create_service_container(c, spec, name, labels, files)
        )

    def ensure_network(self, spec: NetworkSpec) -> str:
        return self._call(lambda client: networks.ensure_network(client, spec))

    def rename_container(self, container_id: str, name: str) -> None:
        self._call(lambda client: containers.rename_container(client, container_id, name))

    def exec_output(
        self, container_id: str, args: ExecArgs
    ) -> tuple[str, Stream[tuple[str, bytes]]]:
        return self._call(
            lambda client: execution.exec_output(client, container_id, args), long=True
        )

    def exec_state(self, exec_id: str) -> ExecState:
        return self._call(lambda client: execution.exec_state(client, exec_id))

    def run_output(
        self, args: RunArgs, name: str, labels: dict[str, str]
    ) -> tuple[str, Stream[tuple[str, bytes]]]:
        return self._call(
            lambda client: execution.run_output(client, args, name, labels), long=True
        )

    def wait_exit(self, container_id: str, timeout: float) -> int | None:
        return self._call(
            lambda client: execution.wait_exit(client, container_id, timeout), long=True
        )

    def kill_container(self, container_id: str) -> None:
        self._call(lambda client: execution.kill_container(client, container_id))

    def start_container(self, container_id: str) -> None:
        self._call(lambda client: containers.start_container(client, container_id))

    def stop_container(self, container_id: str, timeout: int) -> None:
        # The read must outlast the engine's own stop timeout.
        self._call(lambda c: containers.stop_container(c, container_id, timeout), long=True)

    def restart_container(self, container_id: str, timeout: int) -> None:
        self._call(lambda c: containers.restart_container(c, container_id, timeout), long=True)

    def remove_container(
        self, container_id: str, *, force: bool = False, volumes: bool = False
    ) -> None:
        # A forced removal stops the container first: the long read timeout.
        self._call(
            lambda c: containers.remove_container(c, container_id, force=force, volumes=volumes),
            long=True,
        )

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return self._call(lambda client: containers.inspect_container(client, container_id))

    def container_state(self, container_id: str) -> ContainerState:
        return self._call(lambda client: containers.container_state(client, container_id))

    def service_containers(self, service: str | None) -> list[ContainerState]:
        return self._call(lambda client: containers.service_containers(client, service))

    def container_logs(self, container_id: str, tail: int) -> list[str]:
        return self._call(lambda client: logs.container_logs(client, container_id, tail))

    def read_logs(self, container_id: str, tail: int, since: float | None) -> list[LogLine]:
        return self._call(lambda client: logs.read_logs(client, container_id, tail, since))

    def follow_logs(self, container_id: str, tail: int, since: float | None) -> Stream[LogLine]:
        return self._call(lambda client: logs.follow_logs(client, container_id, tail, since))

    def container_stats(self) -> StatsResult:
        return self._call(stats.container_stats)

    # --- images, volumes, networks ------------------------------------------------------

    def list_images(self, all_images: bool) -> list[ImageSummary]:
        return self._call(lambda client: images.list_images(client, all_images))

    def image_info(self, ref: str) -> ImageInfo | None:
        return self._call(lambda client: images.image_info(client, ref))

    def pull_image(self, ref: str, progress: PullProgress) -> ImageInfo:
        return self._call(lambda client: images.pull_image(client, ref, progress), long=True)

    def remove_image(self, ref: str) -> None:
        self._call(lambda client: images.remove_image(client, ref))

    def remove_volume(self, name: str) -> None:
        self._call(lambda client: volumes.remove_volume(client, name))

    def remove_network(self, network_id: str) -> None:
        self._call(lambda client: networks.remove_network(client, network_id))

    # --- self-upgrade -------------------------------------------------------------------

    def start_upgrade_helper(
        self, own_id: str, image: str, *, deadline: float, version: str | None
    ) -> str:
        return self._call(
            lambda client: upgrade.start_helper(
                client,
                own_id,
                image,
                deadline=deadline,
                version=version,
                socket=self.socket_path,
                python=sys.executable,
            )
        )

    @property
    def socket_path(self) -> str:
        """Where the engine's unix socket is, as this process sees it."""
        url = self.base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        return url.removeprefix("unix://") if url.startswith("unix://") else "/var/run/docker.sock"


__all__ = ["DockerEngine"]
