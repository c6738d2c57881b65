"""What every benchmark shares: statistics, tables, processes, the machine, signing keys."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shoal.protocol import Signer

BIN = Path(sys.executable).parent
"""The venv's bin directory: ``shoal``, ``shoal-agent`` and ``nats-server`` live there."""


# --------------------------------------------------------------------------- numbers


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min-max`` of the runs, for the tables."""
    if not values:
        return "-"
    return f"{fmt(min(values))}-{fmt(max(values))}"


def fmt(value: float | None, digits: int = 3) -> str:
    """A number with about ``digits`` significant digits (no exponent)."""
    if value is None or value != value:  # None or NaN
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    value = float(f"{value:.{digits}g}")  # round to significant digits first
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    decimals = digits - 1 - int(f"{magnitude:e}".split("e")[1])
    return f"{value:.{max(0, decimals)}f}"


def ms(seconds: float) -> str:
    return fmt(seconds * 1000)


def ratio(value: float, baseline: float) -> str:
    if not baseline or baseline != baseline or value != value:
        return "-"
    return f"{value / baseline:.2f}x"


# --------------------------------------------------------------------------- tables


@dataclass
class Table:
    """One benchmark's results: printed to the terminal and written to the docs."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        lines = [self.title, "=" * len(self.title)]
        lines.append("  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)))
        lines.append("  ".join("-" * w for w in widths))
        for row in self.rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        lines.extend(f"  * {note}" for note in self.notes)
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)


def log(message: str) -> None:
    """Progress on stderr, so that stdout keeps only the tables."""
    stamp = time.strftime("%H:%M:%S")
    sys.stderr.write(f"[{stamp}] {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- processes


def raise_fd_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the new soft limit.

    Children (nats-server, fleet workers) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tool(name: str) -> str:
    """An executable of the venv (``shoal``, ``shoal-agent``, ``nats-server``) or on PATH."""
    candidate = BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages split among their users), if readable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())


@dataclass
class Timed:
    seconds: float
    returncode: int
    stdout: bytes
    stderr: bytes


def run_timed(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300.0
) -> Timed:
    """Run a command to completion; wall time from spawn to exit."""
    t0 = time.perf_counter()
    done = subprocess.run(
        list(argv), env=env, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    seconds = time.perf_counter() - t0
    return Timed(seconds, done.returncode, done.stdout, done.stderr)


def child_env(workdir: Path, **extra: str) -> dict[str, str]:
    """Our environment for ``shoal`` commands, with its config kept in ``workdir``.

    COLUMNS fixes the width of tables printed to a pipe; XDG dirs keep the user's
    own keys and state out of the benchmark.
    """
    env = dict(os.environ)
    env.update(
        COLUMNS="200",
        XDG_CONFIG_HOME=str(workdir / "config"),
        XDG_STATE_HOME=str(workdir / "state"),
    )
    for name in ("NATS_URL", "SHOAL_KEY", "SHOAL_PREFIX", "SHOAL_TIMEOUT", "DOCKER_HOST"):
        env.pop(name, None)
    env.update(extra)
    return env


# --------------------------------------------------------------------------- signing


@dataclass
class BenchKey:
    """A signing key for the controller and a trust file listing it, as deployed for real."""

    signer: Signer
    seed_path: Path
    trust_path: Path

    @classmethod
    def create(cls, directory: Path) -> BenchKey:
        directory.mkdir(parents=True, exist_ok=True)
        signer = Signer.generate("bench")
        seed_path = directory / "bench.nk"
        fd = os.open(seed_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.seed + b"\n")
        trust_path = directory / "trust.toml"
        trust_path.write_text(
            f'[[trust]]\nname = "bench"\nkey = "{signer.public_key}"\nrole = "admin"\n'
        )
        return cls(signer, seed_path, trust_path)


# --------------------------------------------------------------------------- machine


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_description() -> dict[str, str]:
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    docker_cli = shutil.which("docker")
    import pydantic

    return {
        "CPU": cpu_model(),
        "Cores": str(os.cpu_count() or "?"),
        "Memory": memory_total(),
        "OS": os_name(),
        "Kernel": platform.release(),
        "Python": platform.python_version() + f" ({sys.implementation.name})",
        "nats-server": _first_line([tool("nats-server"), "--version"]),
        "nats-py": _dist_version("nats-py"),
        "pydantic": pydantic.VERSION,
        "Docker engine": _first_line([dockerd, "--version"]),
        "docker CLI": _first_line([docker_cli, "--version"]) if docker_cli else "not installed",
        "Open files limit": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
    }


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
