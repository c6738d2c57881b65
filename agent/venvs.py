"""Agent self-upgrade under a service manager: one venv per version and a ``current`` link.

An agent installed as a host service (compose/systemd/shoal-agent.service) runs from::

    /opt/shoal/venvs/<version>/             one venv per installed version
    /opt/shoal/current -> venvs/<version>   what the unit's ExecStart runs

``shoal agents upgrade --version V`` then works in four steps:

1. The agent creates ``venvs/V`` with the interpreter it runs on and installs ``shoal==V``
   into it with pip, from wherever the agent's environment points pip (``PIP_INDEX_URL``,
   ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``; the unit's environment file).
2. It checks that the new agent reports V (``--version``) and accepts this host's
   configuration (``--check-config``). If either fails, nothing has changed.
3. It writes ``upgrade.env`` (the venv it comes from, the one it goes to, a deadline)
   beside the venvs, points ``current`` at the new venv (one rename) and exits 75, which
   the unit restarts (after its ``RestartSec``).
4. The new agent is on trial until it has connected, subscribed and sent its first
   heartbeat: then it commits (removes ``upgrade.env``). Past the deadline it points
   ``current`` back, says why in ``upgrade-failed.env`` and exits 75, and the old agent
   starts again and reports that in its heartbeats (``upgrade_failed``). A version that
   cannot even import is put back by the unit's ``ExecStartPre`` (the same rule, in sh).

Nothing here talks to NATS or Docker; the handler (handlers/upgrade.py) and the agent's
entry point (cli.py) call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal.protocol import BadRequest, UpgradeFailed

from .errors import AgentRestart

log = logging.getLogger("shoal.agent.upgrade")

RESTART_EXIT = 75
"""The agent's exit code when it wants its service manager to start it again."""
TRIAL_FILE = "upgrade.env"
FAILED_FILE = "upgrade-failed.env"
VENVS = "venvs"
CURRENT = "current"
INSTALL_TIMEOUT = 600.0
"""Seconds pip may take to install the new version."""
CHECK_TIMEOUT = 60.0
"""Seconds the new agent may take to report its version or check the configuration."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_LINE = re.compile(r"(SHOAL_UPGRADE_[A-Z]+)=(.*)")
OUTPUT_TAIL = 1500
"""Characters of pip's output kept in an error."""


@dataclass(frozen=True, slots=True)
class Trial:
    """An upgrade not yet committed: ``upgrade.env``."""

    source: str
    """The venv the agent came from (a name under venvs/)."""
    target: str
    """The venv on trial."""
    version: str
    deadline: int
    """Seconds since the epoch by which the new agent must commit."""

    def render(self) -> str:
        # Sourced by the unit's ExecStartPre: every value is a checked token or a number.
        return (
            "# An agent upgrade not yet confirmed (written by shoal-agent, docs/operations.md)\n"
            f"SHOAL_UPGRADE_FROM={self.source}\n"
            f"SHOAL_UPGRADE_TO={self.target}\n"
            f"SHOAL_UPGRADE_VERSION={self.version}\n"
            f"SHOAL_UPGRADE_DEADLINE={self.deadline}\n"
        )


def parse_env_file(text: str) -> dict[str, str]:
    """``SHOAL_UPGRADE_*=value`` lines; anything else is ignored (never evaluated)."""
    found = {}
    for line in text.splitlines():
        match = _LINE.fullmatch(line.strip())
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def _token(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value[:80]!r} is not a plain name")
    return value


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a service-managed agent's venvs are, and which one runs."""

    root: Path
    running: str
    """The name of the venv this agent runs from."""

    @property
    def venvs(self) -> Path:
        return self.root / VENVS

    @property
    def current(self) -> Path:
        return self.root / CURRENT

    @property
    def trial_file(self) -> Path:
        return self.root / TRIAL_FILE

    @property
    def failed_file(self) -> Path:
        return self.root / FAILED_FILE

    def venv(self, name: str) -> Path:
        return self.venvs / _token(name, "venv name")

    # --- the trial marker ---------------------------------------------------------

    def trial(self) -> Trial | None:
        """The upgrade on trial, or None (a marker that does not parse counts as none)."""
        try:
            values = parse_env_file(self.trial_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self.trial_file, exc)
            return None
        try:
            return Trial(
                source=_token(values["SHOAL_UPGRADE_FROM"], "from"),
                target=_token(values["SHOAL_UPGRADE_TO"], "to"),
                version=_token(values["SHOAL_UPGRADE_VERSION"], "version"),
                deadline=int(values["SHOAL_UPGRADE_DEADLINE"]),
            )
        except (KeyError, ValueError) as exc:
            log.warning("ignoring %s, which does not parse (%s)", self.trial_file, exc)
            return None

    def last_failure(self) -> str | None:
        """Why the last upgrade was put back, until the next one: for the heartbeats."""
        try:
            values = parse_env_file(self.failed_file.read_text(encoding="utf-8"))
        except OSError:
            return None
        version = values.get("SHOAL_UPGRADE_VERSION") or values.get("SHOAL_UPGRADE_TO") or "?"
        reason = values.get("SHOAL_UPGRADE_REASON") or (
            "the new agent did not start within the deadline; the service manager put the"
            " previous one back"
        )
        return f"upgrade to {version[:128]} rolled back: {reason[:400]}"

    def begin(self, target: str, version: str, deadline: float) -> Trial:
        """Write the trial marker, then point ``current`` at ``target``: the next start
        runs the new version."""
        name, version = _token(target, "venv name"), _token(version, "version")
        trial = Trial(self.running, name, version, math.ceil(deadline))
        self.failed_file.unlink(missing_ok=True)
        _write_atomically(self.trial_file, trial.render())
        try:
            self.point_at(target)
        except OSError:
            self.trial_file.unlink(missing_ok=True)
            raise
        return trial

    def commit(self, trial: Trial) -> None:
        """The new agent is connected and heartbeating: it stays. Venvs other than this
        one and the one it came from (the way back) are removed."""
        self.trial_file.unlink(missing_ok=True)
        self.failed_file.unlink(missing_ok=True)
        _sync_dir(self.root)
        keep = {self.running, trial.source}
        for venv in self.venvs.iterdir():
            if venv.name not in keep and venv.is_dir() and not venv.is_symlink():
                shutil.rmtree(venv, ignore_errors=True)
        log.info("upgrade to %s committed (the way back: %s)", trial.version, trial.source)

    def fall_back(self, trial: Trial, reason: str) -> bool:
        """Point ``current`` back at the venv the trial came from, and say why; False (the
        trial ended, ``current`` left as it is) if that venv is gone."""
        went_back = (self.venv(trial.source) / "bin").is_dir()
        if went_back:
            self.point_at(trial.source)
        else:
            reason += f"; but {self.venv(trial.source)} is gone, so {trial.target} stays"
        self._end(trial, reason)
        log.error("upgrade to %s rolled back to %s: %s", trial.version, trial.source, reason)
        return went_back

    def _end(self, trial: Trial, reason: str) -> None:
        """Record why ``trial`` ended without a commit, and remove its marker."""
        text = trial.render() + f"SHOAL_UPGRADE_REASON={' '.join(reason.split())[:400]}\n"
        _write_atomically(self.failed_file, text)
        self.trial_file.unlink(missing_ok=True)
        _sync_dir(self.root)

    def point_at(self, name: str) -> None:
        """Replace the ``current`` link in one rename (readers see the old or the new)."""
        if not (self.venv(name) / "bin").is_dir():
            raise FileNotFoundError(f"no venv {self.venv(name)}")
        staged = self.root / f".{CURRENT}.{os.getpid()}"
        staged.unlink(missing_ok=True)
        staged.symlink_to(Path(VENVS) / name)
        staged.replace(self.current)
        _sync_dir(self.root)

    def at_start(self, now: float | None = None) -> Trial | None:
        """The trial this agent starts under, if it is the one on trial.

        A trial whose deadline has passed is put back here, and :class:`AgentRestart`
        raised (the caller exits :data:`RESTART_EXIT`) unless the venv it came from is
        gone (then this agent stays). A marker left for another venv than this one
        (``current`` was pointed elsewhere by hand) only ends the trial.
        """
        trial = self.trial()
        if trial is None:
            return None
        if trial.target != self.running:
            self._end(trial, f"the agent started from {self.running}, not {trial.target}")
            return None
        if (now if now is not None else time.time()) >= trial.deadline:
            reason = "the new agent did not connect and heartbeat within the deadline"
            if self.fall_back(trial, reason):
                raise AgentRestart(f"upgrade to {trial.version} timed out; back on {trial.source}")
            return None
        return trial


def find_layout(prefix: str | None = None, base_prefix: str | None = None) -> Layout | None:
    """The versioned layout this agent runs in, or None (a plain venv, a container, ...)."""
    try:
        return _layout(prefix, base_prefix)
    except BadRequest:
        return None


def require_layout(prefix: str | None = None, base_prefix: str | None = None) -> Layout:
    """:func:`find_layout`, or a :class:`BadRequest` saying how to get there."""
    return _layout(prefix, base_prefix)


def _layout(prefix: str | None, base_prefix: str | None) -> Layout:
    here = Path(prefix if prefix is not None else sys.prefix)
    base = Path(base_prefix if base_prefix is not None else sys.base_prefix)
    how = (
        "install it as one venv per version under <dir>/venvs/ with a <dir>/current link"
        " that the unit runs (docs/operations.md, 'Upgrading agents under systemd')"
    )
    if here.resolve() == base.resolve():
        raise BadRequest(
            f"this agent runs from {here}, not from a venv: {how}", detail={"mode": "process"}
        )
    venv = here.resolve()
    root = venv.parent.parent
    current = root / CURRENT
    if venv.parent.name != VENVS or not _NAME.fullmatch(venv.name):
        raise BadRequest(
            f"this agent runs from {venv}, not from a venv under .../{VENVS}/: {how}",
            detail={"mode": "process"},
        )
    if not current.is_symlink() or current.resolve() != venv:
        raise BadRequest(
            f"{current} is not a link to {venv}, the venv this agent runs from: {how}",
            detail={"mode": "process"},
        )
    return Layout(root, venv.name)


# --- installing a version ----------------------------------------------------------

Say = Callable[[str], Awaitable[None]]


def requirement(version: str) -> str:
    """What pip installs: the agent's own distribution at ``version``, with uvloop if this
    agent has it."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return f"shoal=={version}"
    return f"shoal[uvloop]=={version}"


async def install(
    layout: Layout,
    version: str,
    *,
    agent_args: Sequence[str] = (),
    say: Say | None = None,
    python: str | None = None,
) -> Path:
    """Create ``venvs/<version>`` holding the agent at ``version``, checked; return it.

    Raises :class:`UpgradeFailed` (and leaves no venv behind) when pip fails, or when the
    new agent does not report ``version`` or refuses this host's configuration
    (``agent_args`` are the running agent's own arguments, checked the same way).
    """
    target = layout.venv(version)
    if target.name == layout.running:
        raise UpgradeFailed(f"this agent already runs from {target}")
    tell: Say = say or _quiet
    if await _reports(target, version):
        # The way back after an upgrade, kept for that: reused as it is (no index needed),
        # and never removed, even if it refuses this host's configuration.
        await tell(f"{target} holds {version} already")
        await _check_config(target, agent_args)
        return target
    base = python or getattr(sys, "_base_executable", None) or sys.executable
    shutil.rmtree(target, ignore_errors=True)  # a venv left by an earlier attempt
    try:
        await tell(f"creating {target}")
        await _run([base, "-m", "venv", str(target)], "creating the venv", CHECK_TIMEOUT * 2)
        wanted = requirement(version)
        await tell(f"installing {wanted}")
        pip = [str(target / "bin" / "python"), "-m", "pip", "install"]
        pip += ["--disable-pip-version-check", "--no-input", "--no-cache-dir", wanted]
        await _run(pip, f"pip install {wanted}", INSTALL_TIMEOUT)
        await tell("checking the new agent")
        await _checked(target, version, agent_args)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


async def _reports(target: Path, version: str) -> bool:
    """Whether ``target`` holds an agent that reports ``version``."""
    agent = target / "bin" / "shoal-agent"
    if not os.access(agent, os.X_OK):
        return False
    try:
        await _check_version(target, version)
    except UpgradeFailed:
        return False
    return True


async def _checked(target: Path, version: str, agent_args: Sequence[str]) -> None:
    """:class:`UpgradeFailed` unless the agent in ``target`` reports ``version`` and
    accepts this host's configuration."""
    await _check_version(target, version)
    await _check_config(target, agent_args)


async def _check_version(target: Path, version: str) -> None:
    agent = str(target / "bin" / "shoal-agent")
    reported = await _run([agent, "--version"], "the new agent's --version", CHECK_TIMEOUT)
    if reported.split()[-1:] != [version]:
        raise UpgradeFailed(
            f"the installed agent reports {reported.strip()[:120]!r}, not {version} (give"
            " the version exactly as the package spells it)"
        )


async def _check_config(target: Path, agent_args: Sequence[str]) -> None:
    await _run(
        [str(target / "bin" / "shoal-agent"), *agent_args, "--check-config"],
        "the new agent's check of this host's configuration",
        CHECK_TIMEOUT,
    )


async def _quiet(_: str) -> None:
    return None


async def _run(argv: Sequence[str], what: str, timeout: float) -> str:
    """Run a command without a shell; its output, or :class:`UpgradeFailed`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    except OSError as exc:
        raise UpgradeFailed(f"{what}: cannot run {argv[0]}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise UpgradeFailed(f"{what}: no result within {timeout:.0f} s") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    text = out.decode("utf-8", "replace")
    if process.returncode != 0:
        tail = text.strip()[-OUTPUT_TAIL:]
        raise UpgradeFailed(f"{what} failed (exit {process.returncode}): {tail}")
    return text


def _write_atomically(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    with staged.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    staged.replace(path)
    _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = [
    "RESTART_EXIT",
    "Layout",
    "Trial",
    "find_layout",
    "install",
    "require_layout",
]
