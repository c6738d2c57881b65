"""What the everyday commands share: target arguments, --since, host colours, confirmation."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import zlib
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import typer

from shoal.protocol import (
    CONTAINER_TARGET_PATTERN,
)

from ..result import ExitCode
from .common import (
    error,
    parse_duration,
    usage_error,
)

Action = Literal["start", "stop", "restart", "rm"]

HOST_STYLES = (
    "cyan",
    "magenta",
    "green",
    "yellow",
    "blue",
    "bright_cyan",
    "bright_magenta",
    "bright_green",
    "bright_yellow",
    "bright_blue",
)


# --- shared pieces ----------------------------------------------------------------------

TargetArg = Annotated[
    str,
    typer.Argument(
        metavar="CONTAINER_OR_SERVICE",
        help="A container name or id, or a service name (then that service's current "
        "container on each host; a service wins over a container of the same name).",
        show_default=False,
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", metavar="DURATION", help="Only the last DURATION, e.g. 90s, 10m, 2h."),
]


def check_target(target: str) -> str:
    if not re.fullmatch(CONTAINER_TARGET_PATTERN, target):
        usage_error(f"invalid container or service name {target[:80]!r}")
    return target


def since_seconds(since: str | None) -> float | None:
    if since is None:
        return None
    try:
        return parse_duration(since)
    except ValueError as exc:
        usage_error(str(exc))


def is_terminal() -> bool:
    return sys.stdout.isatty()


def host_style(host: str) -> str:
    """A stable color per host, so each host keeps its color from run to run."""
    return HOST_STYLES[zlib.crc32(host.encode()) % len(HOST_STYLES)]


def confirm_or_refuse(yes: bool, what: str) -> bool:
    """Whether to ask before doing ``what``: on a terminal unless ``--yes``.

    Without a terminal and without ``--yes``, refuse with exit code 2, as ``prune`` does.
    """
    if yes:
        return False
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        error(f"refusing to {what} without --yes when not on a terminal")
        raise typer.Exit(int(ExitCode.USAGE))
    return True


@contextlib.asynccontextmanager
async def interruptible() -> AsyncIterator[asyncio.Event]:
    """An event set by the first Ctrl-C (or SIGTERM); a second Ctrl-C interrupts at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first(sig: signal.Signals) -> None:
        stop.set()
        loop.remove_signal_handler(sig)  # the next one is a plain KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first, sig)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def short_id(image_id: str) -> str:
    return image_id.rsplit(":", 1)[-1][:12]
