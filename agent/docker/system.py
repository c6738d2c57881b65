"""Engine-wide information."""

from __future__ import annotations

import docker

from ..engine import EngineInfo
from .errors import translate_docker_errors


def engine_info(client: docker.DockerClient) -> EngineInfo:
    with translate_docker_errors("engine info"):
        info = client.api.info()
        version = client.api.version()
    return EngineInfo(
        name=str(info.get("Name", "")),
        version=str(version.get("Version", "")),
        api_version=str(version.get("ApiVersion", "")),
        os=str(info.get("OSType", "linux")),
        kernel=str(info.get("KernelVersion", "")),
        arch=str(info.get("Architecture", "")),
    )


def ping_engine(client: docker.DockerClient) -> None:
    with translate_docker_errors("ping"):
        client.api.ping()
