"""The Shoal controller: the Fleet library API and the ``shoal`` CLI over it."""

from controller.errors import (
    ConnectError,
    FleetError,
    InvalidLimit,
    NotConnected,
    RegistryUnavailable,
)
from controller.fleet import Fleet
from controller.locks import LockHeld, LockLost, ServiceLock
from controller.registry import AgentRecord
from controller.result import ExitCode, FleetResult
from controller.rollout import (
    HostFinished,
    HostProgress,
    InvalidParallelism,
    RollbackStarted,
    RolloutEvent,
    RolloutFinished,
    RolloutReport,
    RolloutStarted,
    WaveFinished,
    WaveStarted,
    collect_rollout,
    plan_waves,
    rollout_exit_code,
)
from controller.targeting import Limit, Targets, resolve_targets

__all__ = [
    "AgentRecord",
    "ConnectError",
    "ExitCode",
    "Fleet",
    "FleetError",
    "FleetResult",
    "HostFinished",
    "HostProgress",
    "InvalidLimit",
    "InvalidParallelism",
    "Limit",
    "LockHeld",
    "LockLost",
    "NotConnected",
    "RegistryUnavailable",
    "RollbackStarted",
    "RolloutEvent",
    "RolloutFinished",
    "RolloutReport",
    "RolloutStarted",
    "ServiceLock",
    "Targets",
    "WaveFinished",
    "WaveStarted",
    "collect_rollout",
    "plan_waves",
    "resolve_targets",
    "rollout_exit_code",
]
__version__ = "0.1.0"
