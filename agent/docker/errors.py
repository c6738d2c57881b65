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


@contextmanager
def translate_docker_errors(action: str) -> Iterator[None]:
    """Translate Docker SDK and transport errors by type and status code."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotFound(f"{action}: {exc.explanation or 'not found'}") from exc
    except docker.errors.APIError as exc:
        status = exc.status_code
        message = f"{action}: {exc.explanation or exc}"
        detail = {"status": status}
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
