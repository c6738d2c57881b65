"""Shoal: run Docker across a fleet of hosts over NATS.

The front door for scripts is :class:`Fleet`; the packages beneath are
``shoal.controller`` (the library and the ``shoal`` CLI), ``shoal.agent`` (the
host side, ``shoal-agent``) and ``shoal.protocol`` (the wire contract).

The folders ``agent/``, ``controller/`` and ``protocol/`` at the top of the source
tree install as ``shoal.agent``, ``shoal.controller`` and ``shoal.protocol``
(pyproject.toml maps them); ``shoal/agent`` and its siblings are symbolic links to
those folders, so that type checkers and editors see the installed layout.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .controller import ExitCode, Fleet, FleetError, FleetResult, Scope

__version__ = "0.1.0"
__all__ = ["ExitCode", "Fleet", "FleetError", "FleetResult", "Scope", "__version__"]


def __getattr__(name: str) -> Any:
    # The controller loads on first use, so that ``import shoal.agent`` on a board
    # does not import the controller too.
    if name in ("ExitCode", "Fleet", "FleetError", "FleetResult", "Scope"):
        from . import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")
