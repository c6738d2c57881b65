"""The Shoal controller: the Fleet library API and the ``shoal`` CLI over it."""

from controller.errors import (
    ConnectError,
    FleetError,
    InvalidLimit,
    NotConnected,
    RegistryUnavailable,
)
from controller.fleet import Fleet
from controller.registry import AgentRecord
from controller.result import ExitCode, FleetResult
from controller.targeting import Limit, Targets, resolve_targets

__all__ = [
    "AgentRecord",
    "ConnectError",
    "ExitCode",
    "Fleet",
    "FleetError",
    "FleetResult",
    "InvalidLimit",
    "Limit",
    "NotConnected",
    "RegistryUnavailable",
    "Targets",
    "resolve_targets",
]
__version__ = "0.1.0"
