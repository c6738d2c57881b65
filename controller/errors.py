"""Errors the controller raises. NATS errors are translated in transport/ only."""

from __future__ import annotations

from shoal.protocol import ShoalError


class FleetError(ShoalError):
    """Base of the controller's own errors."""


class ConnectError(FleetError):
    """NATS cannot be reached or refused the connection."""


class NotConnected(FleetError):
    """The Fleet is used before connect() or after close()."""


class InvalidLimit(FleetError, ValueError):
    """A --limit value is not N or N%."""


class RegistryUnavailable(FleetError):
    """JetStream (and so the registry stream) is not available on this NATS."""


class KeyExists(FleetError):
    """A key-value entry to be created is already there."""


class WrongRevision(FleetError):
    """A key-value entry changed since the revision an update was based on."""
