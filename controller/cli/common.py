"""What every CLI command shares: options, the Fleet, output, errors, exit codes."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO, TypeVar

import pydantic_core
import typer
from pydantic import BaseModel, ValidationError

from shoal.protocol import InvalidSelector, NatsOptions, Selector, ShoalError, utcnow
from shoal.protocol.envelope import summarize_validation_error

from ..errors import ConnectError, FleetError, InvalidLimit, RegistryUnavailable
from ..fleet import DEFAULT_TIMEOUT, Fleet
from ..keys import SigningKeyError, resolve_signer
from ..result import ExitCode, FleetResult
from ..targeting import Limit

if TYPE_CHECKING:
    from rich.console import Console, ConsoleDimensions
    from rich.status import Status

T = TypeVar("T")
R = TypeVar("R", bound=BaseModel)

EXIT_NATS_UNREACHABLE = 5
"""Exit code when NATS itself cannot be reached (beyond the fleet codes 0-4)."""


Part = str | tuple[str, str]
"""Text of a message line, or (text, Rich style) for a part shown in color on a terminal."""


class Stream:
    """Standard output or error for the CLI, with Rich loaded only when a message needs it.

    ``say`` writes one line of parts, colored on a terminal; to a pipe or a file it
    writes the text alone without loading Rich, which keeps ``--json`` and piped
    commands quick to start. Text in the parts is never read as Rich markup, so a
    host's error message can hold brackets. ``print`` and ``status`` are Rich's.
    """

    def __init__(self, *, stderr: bool) -> None:
        self.stderr = stderr
        self._file: TextIO | None = None
        self._console: Console | None = None

    @property
    def file(self) -> TextIO:
        if self._file is not None:
            return self._file
        return sys.stderr if self.stderr else sys.stdout

    @file.setter
    def file(self, stream: TextIO) -> None:
        self._file = stream
        if self._console is not None:
            self._console.file = stream

    @property
    def is_terminal(self) -> bool:
        if self._console is not None:
            return self._console.is_terminal
        try:
            return bool(os.environ.get("FORCE_COLOR")) or self.file.isatty()
        except ValueError:  # closed
            return False

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            tty = self.file.isatty()
            self._console = Console(
                stderr=self.stderr,
                file=self._file,
                width=None if tty else int(os.environ.get("COLUMNS", "250")),
                soft_wrap=False,
                highlight=False,
                markup=False,  # table cells and messages hold hosts' text: never read as markup
            )
        return self._console

    @property
    def size(self) -> ConsoleDimensions:
        return self.console.size

    def print(self, *objects: Any, **options: Any) -> None:
        self.console.print(*objects, **options)

    def status(self, label: str) -> Status:
        return self.console.status(label)

    def say(self, *parts: Part) -> None:
        if self.is_terminal:
            from rich.text import Text

            self.console.print(Text.assemble(*parts))
            return
        text = "".join(part if isinstance(part, str) else part[0] for part in parts)
        self.file.write(text + "\n")
        self.file.flush()


out = Stream(stderr=False)
err = Stream(stderr=True)


def error(message: str) -> None:
    """``error: message`` on standard error."""
    err.say(("error:", "red"), f" {message}")


@dataclass
class GlobalOptions:
    """Options given before the command (``shoal --creds F ps``)."""

    server: str | None = None
    creds: Path | None = None
    nkey: Path | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tlsca: Path | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None
    prefix: str = "shoal"
    offline_after: float | None = None
    key: Path | None = None


def global_options(ctx: typer.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, GlobalOptions) else GlobalOptions()


# --- reusable option types ------------------------------------------------------

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="NATS_URL",
        help="NATS server URL(s), comma-separated. \\[default: nats://127.0.0.1:4222]",
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        "-t",
        envvar="SHOAL_TIMEOUT",
        min=0.1,
        help="Seconds to wait for hosts to answer (a host sending progress gets longer).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts).")]
HostsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        "-H",
        metavar="GLOB",
        help="Hosts whose id matches GLOB (repeatable; repeats widen the match).",
    ),
]
LabelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--selector",
        "-l",
        metavar="SELECTOR",
        help="Label/fact selector, e.g. 'role=web,arch in (arm64,arm),!canary' "
        "(repeatable; repeats narrow the match).",
    ),
]
RetriesOpt = Annotated[
    int,
    typer.Option(
        "--retries",
        min=0,
        max=10,
        help="Ask hosts that stayed silent again (with a new request id) up to N times.",
    ),
]
LimitOpt = Annotated[
    str | None,
    typer.Option("--limit", metavar="N|N%", help="Only a random subset of the matched hosts."),
]


def usage_error(message: str) -> NoReturn:
    error(message)
    raise typer.Exit(int(ExitCode.USAGE))


def build_selector(hosts: list[str] | None, labels: list[str] | None) -> Selector:
    try:
        return Selector.build(hosts or (), labels or ())
    except InvalidSelector as exc:
        usage_error(exc.message)


def build_limit(limit: str | None) -> Limit | None:
    if limit is None:
        return None
    try:
        return Limit.parse(limit)
    except InvalidLimit as exc:
        usage_error(exc.message)


def make_fleet(ctx: typer.Context, server: str | None, timeout: float = DEFAULT_TIMEOUT) -> Fleet:
    g = global_options(ctx)
    try:
        options = NatsOptions(
            servers=server or g.server or os.environ.get("NATS_URL"),
            creds=g.creds,
            nkey=g.nkey,
            user=g.user,
            password=g.password,
            token=g.token,
            tlsca=g.tlsca,
            tlscert=g.tlscert,
            tlskey=g.tlskey,
            name="shoal-cli",
        )
    except ValidationError as exc:
        usage_error(summarize_validation_error(exc))
    try:
        signer = resolve_signer(g.key)
    except SigningKeyError as exc:
        usage_error(exc.message)
    try:
        return Fleet(
            options,
            prefix=g.prefix,
            timeout=timeout,
            offline_after=g.offline_after,
            signer=signer,
        )
    except ValueError as exc:
        usage_error(str(exc))


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine, turning Shoal errors into messages and exit codes."""
    done: list[T] = []

    async def main() -> None:
        # The result is handed over here, not as the task's result: when asyncio.run
        # puts its SIGINT handler back, Python 3.11 builds the repr of the old handler,
        # which holds the main task and so its result (40 ms for `ps` over 1,000 hosts).
        done.append(await coro)

    try:
        asyncio.run(main())
        return done[0]
    except ConnectError as exc:
        error(exc.message)
        raise typer.Exit(EXIT_NATS_UNREACHABLE) from None
    except (InvalidSelector, InvalidLimit) as exc:
        usage_error(exc.message)
    except (RegistryUnavailable, FleetError) as exc:
        error(exc.message)
        raise typer.Exit(1) from None
    except ShoalError as exc:
        error(f"{exc.code}: {exc.message}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.say("interrupted")
        raise typer.Exit(130) from None


async def with_progress(label: str, work: Callable[[], Awaitable[T]]) -> T:
    """Show a spinner on a terminal while ``work`` runs."""
    if not sys.stderr.isatty():
        return await work()
    with err.status(label):
        return await work()


Cell = Part | list[Part]
"""A table cell: text, (text, style), or several such parts."""


def _plain(cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    if isinstance(cell, tuple):
        return cell[0]
    return "".join(_plain(part) for part in cell)


def print_rows(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """A table: Rich on a terminal (styles shown); plain aligned text otherwise, which is
    fast for huge fleets. Cell text is never read as Rich markup."""
    if out.is_terminal:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, pad_edge=False, header_style="bold")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for row in rows:
            table.add_row(
                *(Text.assemble(*(cell if isinstance(cell, list) else [cell])) for cell in row)
            )
        out.print(table)
        return
    texts = [[_plain(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row_text in texts:
        for i, text in enumerate(row_text):
            if len(text) > widths[i]:
                widths[i] = len(text)
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend(
        "  ".join(text.ljust(w) for text, w in zip(row_text, widths, strict=True)).rstrip()
        for row_text in texts
    )
    sys.stdout.write("\n".join(lines) + "\n")


def print_json(document: Any) -> None:
    """One indented JSON document, UTF-8.

    pydantic-core serializes it: ``json.dumps`` with ``indent`` falls back to the
    pure-Python encoder, 5-6 times slower (55 ms against 10 ms for ``ps`` over 1,000
    hosts). Values JSON does not know are written as their ``str``.
    """
    data = pydantic_core.to_json(document, indent=2, fallback=str) + b"\n"
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode())
        return
    buffer.write(data)
    buffer.flush()


def ago(when: datetime | None) -> str:
    """'5 seconds ago', '3 minutes ago', like docker ps."""
    if when is None:
        return "-"
    seconds = int((utcnow() - when).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """``90m``, ``24h``, ``7d`` (also ``s`` and ``w``) in seconds; raises ValueError."""
    m = _DURATION_RE.fullmatch(text)
    if not m or float(m[1]) < 0 or (float(m[1]) == 0 and not allow_zero):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90m, 24h or 7d")
    return float(m[1]) * _DURATION_UNITS[m[2]]


def human_size(size: float) -> str:
    """Bytes as docker shows them (kB, MB, GB: powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.3g}{unit}"
        size /= 1000
    return f"{size:.3g}PB"  # pragma: no cover


def render_footer(result: FleetResult[Any]) -> None:
    """Name every host that did not answer or answered with an error."""
    answered = len(result.replies)
    took = (f" in {result.duration:.2f}s", "dim") if result.duration else ""
    err.say(f"{answered}/{len(result.targeted)} hosts answered ok", took)
    for host, failure in sorted(result.errors.items()):
        err.say(("error", "red"), f" {host}: {failure.code}: {failure.message}")
    for host in result.missing:
        if host in result.offline:
            reason = "offline"
        elif host in result.running:
            reason = "timed out while running (it is still working on it)"
        elif host in result.unreported:
            st = result.unreported[host]
            if st.state == "unknown":
                reason = "never received the request"
            elif st.state == "interrupted":
                reason = "the agent stopped before finishing the request"
            else:
                outcome = "ok" if st.ok else f"failed: {st.error_code}"
                reason = f"finished ({outcome}) but its reply was lost"
        else:
            reason = "no answer"
        err.say(("missing", "yellow"), f" {host}: {reason}")


def finish(result: FleetResult[Any]) -> NoReturn:
    if not result.targeted:
        err.say(("no host matched the target", "yellow"))
    raise typer.Exit(int(result.exit_code))


def ask_fleet(
    ctx: typer.Context,
    server: str | None,
    timeout: float,
    ask: Callable[[Fleet], Awaitable[FleetResult[R]]],
    *,
    label: str = "asking the fleet…",
) -> FleetResult[R]:
    """Connect, ask with a spinner on a terminal, and return the result; errors
    become messages and exit codes (see :func:`run`)."""
    fleet = make_fleet(ctx, server, timeout)

    async def work() -> FleetResult[R]:
        async with fleet:
            return await with_progress(label, lambda: ask(fleet))

    return run(work())


def show_result(
    result: FleetResult[R],
    render: Callable[[FleetResult[R]], None],
    *,
    json_: bool,
    document: dict[str, Any] | None = None,
) -> NoReturn:
    """Print ``result`` (one JSON document, or its rendering and the footer naming
    failed and silent hosts) and exit with its exit code."""
    if json_:
        print_json(document if document is not None else result.to_json())
    else:
        render(result)
        render_footer(result)
    finish(result)
