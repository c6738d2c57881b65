"""Docker SDK errors become Shoal errors by the engine's status code alone."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from shoal.agent.docker.errors import is_status, translate_docker_errors
from shoal.protocol import (
    BadRequest,
    Conflict,
    DockerError,
    DockerUnavailable,
    NotFound,
    OperationTimeout,
    ShoalError,
)


def api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("engine said no", response=response, explanation=explanation)


@pytest.mark.parametrize(
    ("status", "explanation", "expected"),
    [
        (404, "No such image: web:1", NotFound),
        (404, "no such image, worded differently", NotFound),  # no message matching
        (409, "container is running", Conflict),
        (400, "invalid reference format", BadRequest),
        (500, "driver failed", DockerError),
    ],
)
def test_status_codes_choose_the_error(
    status: int, explanation: str, expected: type[ShoalError]
) -> None:
    with pytest.raises(expected) as info, translate_docker_errors("inspect image web:1"):
        raise api_error(status, explanation)
    assert info.value.message.startswith("inspect image web:1: ")
    assert explanation in info.value.message
    assert info.value.detail["status"] == status


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (requests.exceptions.ReadTimeout("slow"), OperationTimeout),
        (requests.exceptions.ConnectionError("refused"), DockerUnavailable),
        (FileNotFoundError("/var/run/docker.sock"), DockerUnavailable),
        (docker.errors.DockerException("no API version"), DockerUnavailable),
    ],
)
def test_transport_failures_say_the_engine_is_unreachable_or_slow(
    raised: Exception, expected: type[ShoalError]
) -> None:
    with pytest.raises(expected), translate_docker_errors("ps"):
        raise raised


def test_is_status_reads_the_code_not_the_class() -> None:
    error = api_error(404, "whatever the engine says")
    assert is_status(error, 404) and is_status(error, 409, 404)
    assert not is_status(error, 409)
    assert not is_status(api_error(500, "x"), 404)
