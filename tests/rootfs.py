"""Debian root filesystems for tests: a local Python base image, and an arm64 userland.

``debian_rootfs(arch, packages)`` debootstraps a minimal Debian (the release this
machine runs) with the given packages into a cache directory and returns its path.
A rootfs is built once per machine and reused by every later run: bootstrapping
takes about a minute natively and about three under arm64 emulation. The cache is
``$SHOAL_TEST_CACHE``, else ``/var/cache/shoal-tests`` as root, else
``~/.cache/shoal-tests``; a file lock keeps two runs from building the same rootfs.

Foreign architectures run through qemu-user-static: ``ensure_binfmt(arch)``
registers its interpreter with the kernel (binfmt_misc) when no one has, with the
``F`` flag Debian's package sets, so the interpreter also works in chroots and in
containers.

The Debian mirror is the one this machine's apt uses (``SHOAL_TEST_DEBIAN_MIRROR``
overrides it): nothing here names a host of its own.

Like ``tests/stack.py``, nothing here imports pytest or the project's packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# qemu-user names the kernel machine names; Debian names its ports.
_QEMU_NAME = {"arm64": "aarch64", "armhf": "arm", "armel": "arm"}
_BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
_BOOTSTRAP_TIMEOUT = 1500.0
_COMPLETE = ".shoal-complete"
"""The marker a finished build leaves in its directory (see build_once)."""


class RootfsError(RuntimeError):
    """A rootfs could not be made here; the message says what is missing."""


def cache_dir() -> Path:
    configured = os.environ.get("SHOAL_TEST_CACHE")
    if configured:
        path = Path(configured)
    elif os.geteuid() == 0:
        path = Path("/var/cache/shoal-tests")
    else:
        path = Path.home() / ".cache" / "shoal-tests"
    path.mkdir(parents=True, exist_ok=True)
    return path


def host_debian_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


def debian_suite() -> str:
    """The codename of the Debian release this machine runs (``bookworm``)."""
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value.strip('"'):
            return value.strip('"')
    raise RootfsError("/etc/os-release names no VERSION_CODENAME: not a Debian machine?")


def debian_mirror() -> str:
    """The main Debian archive this machine's apt is configured with."""
    configured = os.environ.get("SHOAL_TEST_DEBIAN_MIRROR")
    if configured:
        return configured
    sources = Path("/etc/apt/sources.list.d")
    candidates: list[str] = []
    for path in sorted(sources.glob("*.sources")):
        candidates += re.findall(r"^URIs:\s*(\S+)", path.read_text(), re.MULTILINE)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", legacy.read_text(), re.MULTILINE)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    raise RootfsError(
        "no Debian archive found in apt's sources; set SHOAL_TEST_DEBIAN_MIRROR to one"
    )


def rootfs_unavailable(arch: str) -> str | None:
    """Why a rootfs for ``arch`` cannot be made here, or None if it can."""
    if os.geteuid() != 0:
        return "debootstrap needs root"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (apt-get install debootstrap)"
    if arch != host_debian_arch():
        qemu = _QEMU_NAME.get(arch, arch)
        if shutil.which(f"qemu-{qemu}-static") is None:
            return f"qemu-{qemu}-static is not installed (apt-get install qemu-user-static)"
        try:
            ensure_binfmt(arch)
        except RootfsError as exc:
            return str(exc)
    try:
        debian_mirror()
        debian_suite()
    except RootfsError as exc:
        return str(exc)
    return None


def ensure_binfmt(arch: str) -> None:
    """Make the kernel run ``arch`` binaries through qemu-user-static."""
    qemu = _QEMU_NAME.get(arch, arch)
    entry = _BINFMT_MISC / f"qemu-{qemu}"
    if not (_BINFMT_MISC / "register").exists():
        result = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(_BINFMT_MISC)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 and not (_BINFMT_MISC / "register").exists():
            raise RootfsError(f"cannot mount binfmt_misc: {result.stderr.strip()}")
    if entry.exists():
        if "enabled" not in entry.read_text():
            entry.write_text("1")
        return
    conf = Path(f"/usr/lib/binfmt.d/qemu-{qemu}.conf")
    if not conf.exists():
        raise RootfsError(f"{conf} is missing: is qemu-user-static installed?")
    try:
        (_BINFMT_MISC / "register").write_text(conf.read_text().strip())
    except OSError as exc:
        if not entry.exists():  # another run may have registered it meanwhile
            raise RootfsError(f"cannot register {conf.name} with binfmt_misc: {exc}") from exc


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(
    target: Path,
    build: Callable[[Path], None],
    *,
    newer_than: Path | None = None,
) -> Path:
    """``target`` in the cache, built by ``build(directory)`` once per machine.

    ``build`` fills a ``.building`` directory beside ``target`` (it may create it),
    which is renamed to ``target`` only once it succeeded, with a completion marker;
    a build that failed or was interrupted leaves nothing that counts. A file lock
    keeps two runs from building the same thing. With ``newer_than`` (another
    cached build), ``target`` is built again if that one was rebuilt since.
    """
    done = target / _COMPLETE
    with file_lock(cache_dir() / f".{target.name}.lock"):
        if done.exists() and (
            newer_than is None or done.stat().st_mtime >= (newer_than / _COMPLETE).stat().st_mtime
        ):
            return target
        building = target.with_name(target.name + ".building")
        for stale in (building, target):
            if stale.exists():
                unmount_below(stale)
                shutil.rmtree(stale)
        started = time.monotonic()
        try:
            build(building)
        except BaseException:
            if building.exists():
                unmount_below(building)
                shutil.rmtree(building, ignore_errors=True)
            raise
        (building / _COMPLETE).write_text(f"built in {time.monotonic() - started:.0f} s\n")
        building.rename(target)
        return target


def debian_rootfs(arch: str, packages: Sequence[str], *, log: Path | None = None) -> Path:
    """A cached minimal Debian rootfs for ``arch`` with ``packages`` installed."""
    reason = rootfs_unavailable(arch)
    if reason is not None:
        raise RootfsError(reason)
    suite = debian_suite()
    key = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:12]
    root = cache_dir() / f"debian-{suite}-{arch}-{key}"
    log = log or cache_dir() / f"{root.name}.log"

    def bootstrap(building: Path) -> None:
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--arch={arch}",
            f"--include={','.join(packages)}",
            suite,
            str(building),
            debian_mirror(),
        ]
        with log.open("wb") as out:
            try:
                result = subprocess.run(
                    argv, stdout=out, stderr=subprocess.STDOUT, timeout=_BOOTSTRAP_TIMEOUT
                )
            except subprocess.TimeoutExpired as exc:
                raise RootfsError(f"debootstrap took over {_BOOTSTRAP_TIMEOUT:.0f} s") from exc
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            raise RootfsError(
                f"debootstrap {arch} failed (exit {result.returncode}):\n" + "\n".join(tail)
            )
        # Nothing of the build machine's apt state is needed in a test image.
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)

    return build_once(root, bootstrap)


def rootfs_tar(root: Path, destination: Path) -> Path:
    """A tarball of ``root`` for ``docker import``, cached beside the rootfs."""
    built = (root / _COMPLETE).stat().st_mtime
    if destination.exists() and destination.stat().st_mtime >= built:
        return destination
    partial = destination.with_name(destination.name + ".partial")
    with tarfile.open(partial, "w") as archive:
        for entry in sorted(root.iterdir()):
            if entry.name in {_COMPLETE, "proc", "sys", "dev"}:
                continue
            archive.add(entry, arcname=entry.name)
        for name in ("proc", "sys", "dev"):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
    partial.rename(destination)
    return destination


# ------------------------------------------------------------------ foreign wheels, chroots
#
# Installing a Python project into a foreign-architecture rootfs without a compiler:
# the project's requirements are worked out for the target machine (pip on the build
# machine would evaluate their markers for itself), binary wheels for the target are
# fetched on the build machine into a cached wheelhouse, and pip inside the rootfs,
# running under emulation, installs from it with no index at all.


def dpkg_version(root: Path, package: str) -> str:
    """The version of the Debian ``package`` installed in ``root`` (RootfsError if none)."""
    status = root / "var/lib/dpkg/status"
    for stanza in status.read_text(errors="replace").split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Package") == package and "installed" in fields.get("Status", ""):
            return fields["Version"]
    raise RootfsError(f"{package} is not installed in {root}")


def rootfs_python_version(root: Path) -> str:
    """``3.11``: the major.minor of the ``python3`` package in ``root``."""
    found = re.match(r"(?:\d+:)?(\d+\.\d+)", dpkg_version(root, "python3"))
    if found is None:
        raise RootfsError(f"cannot read the python3 version in {root}")
    return found[1]


def rootfs_glibc(root: Path | None = None) -> tuple[int, int]:
    """glibc's (major, minor) in ``root``, or on this machine when ``root`` is None."""
    if root is not None:
        version = dpkg_version(root, "libc6")
    else:
        version = os.confstr("CS_GNU_LIBC_VERSION") or ""
    found = re.search(r"(\d+)\.(\d+)", version)
    if found is None:
        raise RootfsError(f"cannot read the glibc version from {version!r}")
    return int(found[1]), int(found[2])


def manylinux_platforms(machine: str, glibc: tuple[int, int]) -> list[str]:
    """pip ``--platform`` tags a glibc ``machine`` (``aarch64``, ``armv7l``) can run."""
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{machine}", f"linux_{machine}"]


def target_requirements(
    pyproject: Path,
    machine: str,
    *,
    python_version: str,
    extras: Sequence[str] = (),
) -> list[str]:
    """``[project]`` dependencies (and ``extras``) that apply on Linux ``machine``.

    Markers are evaluated for the target, not for this machine; the result names
    each requirement without its marker (``name[extras]specifier``).
    """
    import tomllib

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    listed = [(text, "") for text in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        listed += [(text, extra) for text in optional[extra]]
    environment: dict[str, str] = {
        **default_environment(),
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_version": f"{python_version}.0",
    }
    own = re.sub(r"[-_.]+", "-", project["name"]).lower()
    wanted: dict[str, str] = {}
    for text, extra in listed:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**environment, "extra": extra}
        ):
            continue
        if re.sub(r"[-_.]+", "-", requirement.name).lower() == own:
            continue  # "project[other-extra]": the project itself, installed separately
        requirement.marker = None
        wanted[str(requirement)] = extra
    return sorted(wanted)


def fetch_wheels(
    requirements: Sequence[str],
    platforms: Sequence[str],
    *,
    python_version: str,
    log: Path | None = None,
) -> Path:
    """A cached wheelhouse with wheels of ``requirements`` (and all they need) for a target.

    Binary wheels come from ``pip download --only-binary=:all:`` for the given
    platform tags and CPython version. A distribution published only as a source
    archive is built into a wheel here, and must come out pure Python
    (``none-any``), so nothing for the target needs a compiler. Fetched once per
    machine; later calls with the same arguments are offline. The wheelhouse holds
    ``requirements.txt`` (the requirements) beside the wheels. RootfsError with
    pip's output when something has neither a wheel nor a pure-Python source.
    """
    import json

    spec = {
        "requirements": sorted(requirements),
        "platforms": list(platforms),
        "python_version": python_version,
        "implementation": "cp",
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def fill(building: Path) -> None:
        building.mkdir(parents=True)
        _fill_wheelhouse(requirements, platforms, building, python_version, log)
        (building / "requirements.txt").write_text("\n".join(sorted(requirements)) + "\n")
        (building / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")

    return build_once(cache_dir() / f"wheels-{key}", fill)


def _fill_wheelhouse(
    requirements: Sequence[str],
    platforms: Sequence[str],
    house: Path,
    python_version: str,
    log: Path | None,
) -> None:
    import sys

    built: set[str] = set()
    transcript: list[str] = []
    try:
        while True:
            result = download_wheels(requirements, platforms, house, python_version=python_version)
            transcript.append(result.stdout)
            if result.returncode == 0:
                return
            missing = re.findall(r"No matching distribution found for (\S+)", result.stdout)
            if not missing or missing[0] in built:
                raise RootfsError(
                    f"no wheels for {' '.join(requirements)} on {platforms[0]} "
                    f"(pip download exit {result.returncode}):\n{result.stdout[-3000:]}"
                )
            # No wheel for any platform: build one here from the source archive.
            wanted = missing[0]
            built.add(wanted)
            before = set(house.glob("*.whl"))
            name = re.split(r"[\s\[<>=!~;]", wanted, maxsplit=1)[0]
            argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", f"--no-binary={name}"]
            wheel = subprocess.run(
                [*argv, "--disable-pip-version-check", "-w", str(house), wanted],
                capture_output=True,
                text=True,
                timeout=600,
                stdin=subprocess.DEVNULL,
            )
            transcript.append(wheel.stdout + wheel.stderr)
            made = sorted(set(house.glob("*.whl")) - before)
            if wheel.returncode != 0 or not made:
                raise RootfsError(
                    f"{wanted} has no wheel for {platforms[0]} and no buildable source:\n"
                    + (wheel.stdout + wheel.stderr)[-3000:]
                )
            impure = [w.name for w in made if not w.name.endswith("-none-any.whl")]
            if impure:
                raise RootfsError(
                    f"{wanted} has no wheel for {platforms[0]}, and its source builds "
                    f"compiled code ({', '.join(impure)}): the target would need a compiler"
                )
    finally:
        if log is not None:
            log.write_text("\n".join(transcript))


def download_wheels(
    requirements: Sequence[str],
    platforms: Sequence[str],
    destination: Path,
    *,
    python_version: str,
    log: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``pip download`` binary wheels only for another platform into ``destination``.

    Wheels already in ``destination`` count too (``--find-links``).
    """
    import sys

    destination.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:"]
    for platform_tag in platforms:
        argv += ["--platform", platform_tag]
    argv += [
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--disable-pip-version-check",
        "--find-links",
        str(destination),
        "-d",
        str(destination),
        *requirements,
    ]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    result.stdout = (result.stdout or "") + (result.stderr or "")
    if log is not None:
        log.write_text(" ".join(argv) + "\n" + result.stdout)
    return result


def _mount(*argv: str) -> None:
    result = subprocess.run(["mount", *argv], capture_output=True, text=True)
    if result.returncode != 0:
        raise RootfsError(f"mount {' '.join(argv)}: {result.stderr.strip()}")


def unmount_below(root: Path, *, include_root: bool = True) -> None:
    """Detach every mount under ``root`` (and ``root`` itself), deepest first."""
    import ctypes

    prefix = str(root.resolve())
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = {
        point
        for point in (line.split()[4].replace("\\040", " ") for line in lines)
        if (include_root and point == prefix) or point.startswith(prefix + "/")
    }
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(points, key=len, reverse=True):
        if libc.umount2(point.encode(), 2) != 0:  # MNT_DETACH
            error = ctypes.get_errno()
            if error not in (22, 2):  # EINVAL (not a mount point any more), ENOENT
                raise RootfsError(f"cannot unmount {point}: {os.strerror(error)}")


@contextlib.contextmanager
def chroot_mounts(root: Path, binds: dict[str, Path] | None = None) -> Iterator[Path]:
    """``/proc`` and ``/dev`` in ``root``, plus read-only ``binds`` (path inside: host dir).

    Everything mounted at or under ``root`` is detached on the way out, whatever happens.
    """
    try:
        _mount("-t", "proc", "proc", str(root / "proc"))
        _mount("--bind", "/dev", str(root / "dev"))
        for inside, host in (binds or {}).items():
            target = root / inside.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            _mount("--bind", str(host), str(target))
            _mount("-o", "remount,bind,ro", str(target))
        yield root
    finally:
        unmount_below(root, include_root=False)


CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PIP_NO_CACHE_DIR": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}
"""A clean environment for commands in a chroot: nothing of this machine's venv or pip."""


def run_chroot(
    root: Path, argv: Sequence[str], *, timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``root`` (mounts are the caller's), output captured."""
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run(
        [chroot, str(root), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CHROOT_ENV,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def venv_rootfs(
    base: Path, wheelhouse: Path, *, venv: str = "/opt/shoal", log: Path | None = None
) -> Path:
    """A cached copy of ``base`` with a venv at ``venv`` holding the wheelhouse's requirements.

    Made once per (rootfs, wheelhouse), and again if the rootfs was rebuilt since:
    the venv is created with the rootfs's own ``python3`` and filled by
    ``pip install --no-index`` from the wheelhouse, both running in a chroot (under
    emulation for a foreign rootfs).
    """
    steps = [
        ["python3", "-m", "venv", venv],
        [
            f"{venv}/bin/pip",
            "install",
            "--no-index",
            "--find-links",
            "/wheels",
            "-r",
            "/wheels/requirements.txt",
        ],
    ]

    def install(building: Path) -> None:
        subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(building)], check=True)
        output: list[str] = []
        try:
            with chroot_mounts(building, {"/wheels": wheelhouse}):
                for step in steps:
                    result = run_chroot(building, step)
                    output.append(f"$ {' '.join(step)}\n{result.stdout}{result.stderr}")
                    if result.returncode != 0:
                        raise RootfsError(
                            f"{' '.join(step)} in {base.name} failed "
                            f"(exit {result.returncode}):\n{output[-1][-3000:]}"
                        )
            (building / "wheels").rmdir()
        finally:
            if log is not None:
                log.write_text("\n".join(output))

    root = base.with_name(f"{base.name}-venv-{wheelhouse.name}")
    return build_once(root, install, newer_than=base)  # again after a new base


@contextlib.contextmanager
def scratch_root(base: Path, workdir: Path) -> Iterator[Path]:
    """A writable view of ``base`` for one run, thrown away afterwards.

    An overlay (``base`` read-only below, changes in ``workdir``) where the kernel
    allows it, else a full copy. Unmounted and removed on the way out.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    merged = workdir / "root"
    try:
        upper, work = workdir / "upper", workdir / "work"
        for directory in (merged, upper, work):
            directory.mkdir()
        try:
            _mount(
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={base},upperdir={upper},workdir={work}",
                str(merged),
            )
        except RootfsError:
            merged.rmdir()
            subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(merged)], check=True)
        yield merged
    finally:
        if workdir.exists():
            unmount_below(workdir)
            shutil.rmtree(workdir)
