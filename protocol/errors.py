"""Error codes shared by agent and controller, and the one exception tree."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Closed set of error codes that travel in replies.

    A controller receiving a code it does not know keeps it as a plain string
    (see :class:`protocol.envelope.ErrorInfo`), so newer agents never break
    older controllers.
    """

    BAD_REQUEST = "bad_request"
    UNKNOWN_VERB = "unknown_verb"
    UNSUPPORTED_VERSION = "unsupported_version"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    EXPIRED = "expired"
    REPLAYED = "replayed"
    POLICY_DENIED = "policy_denied"
    DOCKER_UNAVAILABLE = "docker_unavailable"
    DOCKER_ERROR = "docker_error"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TIMEOUT = "timeout"
    BUSY = "busy"
    SHUTTING_DOWN = "shutting_down"
    DEPLOY_FAILED = "deploy_failed"
    UPGRADE_FAILED = "upgrade_failed"
    INVALID_REPLY = "invalid_reply"
    INTERNAL = "internal"


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}


class BadRequest(ShoalError):
    """The request is malformed or its arguments are invalid."""

    code = ErrorCode.BAD_REQUEST


class UnknownVerb(ShoalError):
    """The verb is not one this agent serves."""

    code = ErrorCode.UNKNOWN_VERB


class UnsupportedVersion(ShoalError):
    """The message uses a protocol version this side does not speak."""

    code = ErrorCode.UNSUPPORTED_VERSION


class PayloadTooLarge(ShoalError):
    """The message is larger than this side accepts."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class Expired(ShoalError):
    """The request is outside its time window."""

    code = ErrorCode.EXPIRED


class Replayed(ShoalError):
    """The request id was seen before; a request runs at most once per host."""

    code = ErrorCode.REPLAYED


class DockerUnavailable(ShoalError):
    """The Docker engine cannot be reached."""

    code = ErrorCode.DOCKER_UNAVAILABLE


class DockerError(ShoalError):
    """The Docker engine refused or failed an operation."""

    code = ErrorCode.DOCKER_ERROR


class NotFound(ShoalError):
    """The named object does not exist."""

    code = ErrorCode.NOT_FOUND


class Conflict(ShoalError):
    """The operation conflicts with the current state."""

    code = ErrorCode.CONFLICT


class OperationTimeout(ShoalError):
    """An operation did not finish within its time limit."""

    code = ErrorCode.TIMEOUT


class DeployFailed(ShoalError):
    """A deploy or rollback failed on the host (the previous revision was restored)."""

    code = ErrorCode.DEPLOY_FAILED


class UpgradeFailed(ShoalError):
    """The agent's new version could not be installed or failed its checks; nothing changed."""

    code = ErrorCode.UPGRADE_FAILED


class Busy(ShoalError):
    """The agent is at its concurrency limit and its queue is full."""

    code = ErrorCode.BUSY


class ShuttingDown(ShoalError):
    """The agent is stopping and takes no new requests."""

    code = ErrorCode.SHUTTING_DOWN


class InvalidHostId(ShoalError, ValueError):
    """A host id is not a safe subject token."""

    code = ErrorCode.BAD_REQUEST


class InvalidSelector(ShoalError, ValueError):
    """A host glob or label selector cannot be parsed."""

    code = ErrorCode.BAD_REQUEST
