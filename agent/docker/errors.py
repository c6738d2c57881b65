"""The one place where Docker SDK errors become Shoal errors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import docker.errors
import requests.exceptions

from shoal.protocol import (
    BadRequest,
    Conflict,
    DockerError,
    DockerUnavailable,
    NotFound,
    OperationTimeout,
)


def is_status(exc: docker.errors.APIError, *codes: int) -> bool:
    """Whether the engine answered with one of these HTTP status codes.

    The status code, not docker-py's subclasses (``ImageNotFound`` is chosen by
    matching the engine's message text, which engines word differently).
    """
    return exc.status_code in codes


@contextmanager
def translate_docker_errors(action: str) -> Iterator[None]:
    """Translate Docker SDK and transport errors by status code."""
    try:
        yield
    except docker.errors.APIError as exc:
        status = exc.status_code
        message = f"{action}: {exc.explanation or exc}"
        detail = {"status": status}
        if status == 404:
            raise NotFound(f"{action}: {exc.explanation or 'not found'}", detail=detail) from exc
        if status == 409:
            raise Conflict(message, detail=detail) from exc
        if status == 400:
            raise BadRequest(message, detail=detail) from exc
        raise DockerError(message, detail=detail) from exc
    except (requests.exceptions.Timeout, TimeoutError) as exc:
        raise OperationTimeout(f"{action}: the Docker engine did not answer in time") from exc
    except (requests.exceptions.ConnectionError, ConnectionError, FileNotFoundError) as exc:
        raise DockerUnavailable(f"{action}: the Docker engine is unreachable") from exc
    except docker.errors.DockerException as exc:
        # Raised by the SDK when it cannot even negotiate an API version.
        raise DockerUnavailable(f"{action}: {exc}") from exc
