"""Commands in containers: docker exec, and one-off containers (docker run --rm)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker

from shoal.protocol import ExecArgs, RunArgs

from ..engine import ExecState
from .errors import translate_docker_errors


class OutputStream:
    """A container's output as ``("stdout" | "stderr", bytes)``; ``close`` ends it."""

    def __init__(self, raw: Any, response: Any = None) -> None:
        self._raw = raw
        self._response = response

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for item in self._raw:
            out, err = item if isinstance(item, tuple) else (item, None)
            if out:
                yield "stdout", bytes(out)
            if err:
                yield "stderr", bytes(err)

    def close(self) -> None:
        for closing in (getattr(self._raw, "close", None), getattr(self._response, "close", None)):
            if closing is not None:
                with contextlib.suppress(Exception):
                    closing()


def exec_output(
    client: docker.DockerClient, container_id: str, args: ExecArgs
) -> tuple[str, OutputStream]:
    """Start ``args.command`` in the container; its exec id and its output."""
    api = client.api
    with translate_docker_errors(f"exec in container {container_id[:12]}"):
        created = api.exec_create(
            container_id,
            list(args.command),
            stdout=True,
            stderr=True,
            user=args.user or "",
            workdir=args.workdir,
            environment=dict(args.env) or None,
        )
        exec_id = str(created["Id"])
        raw = api.exec_start(exec_id, stream=True, demux=True)
    return exec_id, OutputStream(raw)


def exec_state(client: docker.DockerClient, exec_id: str) -> ExecState:
    with translate_docker_errors(f"inspect exec {exec_id[:12]}"):
        raw = client.api.exec_inspect(exec_id)
    code = raw.get("ExitCode")
    return ExecState(
        running=bool(raw.get("Running")),
        exit_code=None if raw.get("Running") or code is None else int(code),
        pid=int(raw.get("Pid") or 0),
    )


def run_output(
    client: docker.DockerClient, args: RunArgs, name: str, labels: dict[str, str]
) -> tuple[str, OutputStream]:
    """Create and start a one-off container; its id and its output (from its start)."""
    api = client.api
    host_config = api.create_host_config(network_mode=args.network, init=True)
    with translate_docker_errors(f"create container {name}"):
        created = api.create_container(
            image=args.image,
            command=list(args.command),
            user=args.user,
            working_dir=args.workdir,
            environment=dict(args.env) or None,
            labels=labels,
            host_config=host_config,
            name=name,
        )
    container_id = str(created["Id"])
    try:
        with translate_docker_errors(f"attach to container {name}"):
            raw = api.attach(
                container_id, stdout=True, stderr=True, stream=True, logs=True, demux=True
            )
        with translate_docker_errors(f"start container {name}"):
            api.start(container_id)
    except BaseException:
        with contextlib.suppress(Exception):
            api.remove_container(container_id, force=True, v=True)
        raise
    return container_id, OutputStream(raw)


def wait_exit(client: docker.DockerClient, container_id: str, timeout: float) -> int | None:
    """The exit code once the container stopped (None if it has not within ``timeout``)."""
    with translate_docker_errors(f"wait for container {container_id[:12]}"):
        try:
            return int(client.api.wait(container_id, timeout=timeout).get("StatusCode", -1))
        except Exception as exc:  # read timeout of the wait
            if "timed out" in str(exc).lower():
                return None
            raise


def kill_container(client: docker.DockerClient, container_id: str) -> None:
    with translate_docker_errors(f"kill container {container_id[:12]}"):
        client.api.kill(container_id)
