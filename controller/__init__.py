"""The Shoal controller: the Fleet library API and the ``shoal`` CLI over it."""

from typing import TYPE_CHECKING, Any

from .errors import (
    ConnectError,
    FleetError,
    InvalidLimit,
    NotConnected,
    RegistryUnavailable,
)
from .fleet import Fleet
from .images import ImageComparison, ImageVariant, compare_images
from .locks import LockHeld, LockLost, ServiceLock
from .registry import AgentRecord
from .result import ExitCode, FleetResult
from .scope import Scope, ScopeOptions
from .targeting import Limit, Targets, resolve_targets

if TYPE_CHECKING:
    from .rollout import (
        HostFinished,
        HostProgress,
        InvalidParallelism,
        RollbackStarted,
        RolloutEvent,
        RolloutFinished,
        RolloutReport,
        RolloutRun,
        RolloutStarted,
        WaveFinished,
        WaveStarted,
        collect_rollout,
        plan_waves,
        rollout_exit_code,
        run_rollouts,
    )

# The rollout engine loads on first use (``controller.RolloutReport``, ``Fleet.deploy``),
# so that commands and programs that never deploy do not pay for importing it.
_ROLLOUT = frozenset(
    {
        "HostFinished",
        "HostProgress",
        "InvalidParallelism",
        "RollbackStarted",
        "RolloutEvent",
        "RolloutFinished",
        "RolloutReport",
        "RolloutRun",
        "RolloutStarted",
        "WaveFinished",
        "WaveStarted",
        "collect_rollout",
        "plan_waves",
        "rollout_exit_code",
        "run_rollouts",
    }
)


def __getattr__(name: str) -> Any:
    if name not in _ROLLOUT:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    from . import rollout

    value = getattr(rollout, name)
    globals()[name] = value
    return value


__all__ = [
    "AgentRecord",
    "ConnectError",
    "ExitCode",
    "Fleet",
    "FleetError",
    "FleetResult",
    "HostFinished",
    "HostProgress",
    "ImageComparison",
    "ImageVariant",
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
    "RolloutRun",
    "RolloutStarted",
    "Scope",
    "ScopeOptions",
    "ServiceLock",
    "Targets",
    "WaveFinished",
    "WaveStarted",
    "collect_rollout",
    "compare_images",
    "plan_waves",
    "resolve_targets",
    "rollout_exit_code",
    "run_rollouts",
]
__version__ = "0.1.0"
