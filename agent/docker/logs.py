"""Container logs: the last lines, and followed streams."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker

from shoal.protocol import LogLine, parse_log_line

from .convert import decode
from .errors import translate_docker_errors


def container_logs(client: docker.DockerClient, container_id: str, tail: int) -> list[str]:
    with translate_docker_errors(f"logs of container {container_id[:12]}"):
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=tail)
    text = decode(raw)
    return text.splitlines()[-tail:]


def read_logs(
    client: docker.DockerClient, container_id: str, tail: int, since: float | None
) -> list[LogLine]:
    with translate_docker_errors(f"logs of container {container_id[:12]}"):
        raw = client.api.logs(
            container_id, stdout=True, stderr=True, timestamps=True, tail=tail, since=since
        )
    text = decode(raw)
    return [parse_log_line(line) for line in text.splitlines()]


class LineStream:
    """Log lines of a followed container, split from the engine's chunks."""

    def __init__(self, stream: Any, container_id: str) -> None:
        self._stream = stream
        self._action = f"follow logs of container {container_id[:12]}"

    def __iter__(self) -> Iterator[LogLine]:
        pending = ""
        with translate_docker_errors(self._action):
            for chunk in self._stream:
                pending += decode(chunk)
                *complete, pending = pending.split("\n")
                for line in complete:
                    yield parse_log_line(line.removesuffix("\r"))
        if pending:
            yield parse_log_line(pending)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # already closed, or the engine went away
            self._stream.close()


def follow_logs(
    client: docker.DockerClient, container_id: str, tail: int, since: float | None
) -> LineStream:
    with translate_docker_errors(f"follow logs of container {container_id[:12]}"):
        stream = client.api.logs(
            container_id,
            stdout=True,
            stderr=True,
            timestamps=True,
            tail=tail,
            since=since,
            stream=True,
            follow=True,
        )
    return LineStream(stream, container_id)
