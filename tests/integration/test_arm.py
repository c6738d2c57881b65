"""ARM: the agent on arm64 under emulation, and its dependencies on armv7 (issue #7).

SLOW. The arm64 test runs the real agent in an arm64 Debian rootfs through
qemu-user-static: the rootfs's own Python, a venv filled offline from aarch64
wheels fetched on this machine, ``shoal-agent`` connected to the session's NATS
server with no Docker engine, so the ``arch`` it reports comes from
``platform.machine()`` of the emulated userland.

What is slow is cached per machine in ``tests.rootfs.cache_dir()`` and reused by
later runs: the debootstrapped rootfs (about three minutes), the aarch64 wheelhouse
(keyed by the requirement set, so later runs need no package index) and a copy of
the rootfs with the dependencies installed in its venv (under a minute, keyed by
the wheelhouse). Each run installs the project's own wheel into a throwaway
overlay of that copy, so code changes never invalidate the caches.

Without debootstrap or qemu-user-static the arm64 tests skip; under ``CI=true``
that is a failure.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.controller import Fleet
from shoal.controller.registry import AgentRecord
from shoal.controller.result import FleetResult
from shoal.protocol import AgentFacts, NatsOptions, Selector, Signer
from tests.conftest import require
from tests.integration.agents import AgentProcess
from tests.integration.conftest import Keys
from tests.poll import poll
from tests.rootfs import (
    CHROOT_ENV,
    RootfsError,
    chroot_mounts,
    debian_rootfs,
    download_wheels,
    fetch_wheels,
    manylinux_platforms,
    rootfs_glibc,
    rootfs_python_version,
    rootfs_unavailable,
    run_chroot,
    scratch_root,
    target_requirements,
    venv_rootfs,
)
from tests.stack import NatsServer, free_port, remove_tree, short_tempdir

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
PACKAGES = ["python3", "python3-venv", "tini"]
"""The arm64 rootfs's packages (the cached rootfs is keyed by exactly this list)."""
ARM64_EXTRAS = ("uvloop",)
"""Extras installed on arm64, as the image does where wheels exist."""
VENV = "/opt/shoal"
AGENT_READY_DEADLINE = 180.0
"""Starting Python and importing the agent under emulation takes seconds, not 15."""
INSTALL_DEADLINE = 900.0
AARCH64_ELF_MACHINE = 183  # EM_AARCH64
ARMV7_PLATFORMS = [
    "manylinux2014_armv7l",
    "manylinux_2_17_armv7l",
    "manylinux_2_31_armv7l",
    "linux_armv7l",
]


def project_name() -> str:
    import tomllib

    name: str = tomllib.loads(PYPROJECT.read_text())["project"]["name"]
    return name


# --------------------------------------------------------------------------- armv7


def test_armv7_dependencies_install_from_wheels_without_a_compiler(tmp_path: Path) -> None:
    """Every dependency the agent has on linux/arm/v7 exists as a binary wheel.

    Only pip's part is checked (no armv7 rootfs): the requirements are pyproject's,
    with their markers evaluated for armv7l, and pip must find a wheel for each of
    them and for everything they need.
    """
    requirements = target_requirements(PYPROJECT, "armv7l", python_version="3.11")
    assert requirements, "pyproject.toml lists no dependencies"
    result = download_wheels(
        requirements, ARMV7_PLATFORMS, tmp_path / "wheels", python_version="3.11"
    )
    assert result.returncode == 0, (
        "some dependency of the agent has no armv7l wheel for CPython 3.11, so installing "
        f"on linux/arm/v7 would need a compiler; requirements: {requirements}\n"
        + result.stdout[-3000:]
    )
    wheels = sorted(p.name for p in (tmp_path / "wheels").iterdir())
    assert wheels and all(name.endswith(".whl") for name in wheels), wheels
    for name in wheels:  # compiled wheels are for armv7l, the rest are pure Python
        tags = name[: -len(".whl")].split("-")[-1]
        assert tags == "any" or "armv7l" in tags, name


# --------------------------------------------------------------------------- arm64 fixtures


@pytest.fixture(scope="module")
def arm64_rootfs() -> Path:
    """The cached arm64 Debian rootfs (built on first use; another run may be building it)."""
    require(rootfs_unavailable("arm64"))
    try:
        return debian_rootfs("arm64", PACKAGES)
    except RootfsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def build_dir() -> Iterator[Path]:
    path = short_tempdir("shoal-arm-")
    try:
        yield path
    finally:
        remove_tree(path)  # detaches anything still mounted in it first (/dev is a bind)


@pytest.fixture(scope="module")
def project_wheel(build_dir: Path) -> Path:
    """The project's wheel, built from the working tree as git sees it."""
    source = build_dir / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        for name in listed.stdout.decode().split("\0"):
            path = ROOT / name
            if name and path.is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, source / name)
    else:  # not a git checkout
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".venv"
            ),
        )
    out = build_dir / "project"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}{result.stderr}"
    (wheel,) = out.glob("*.whl")
    assert wheel.name.endswith("-py3-none-any.whl"), f"the project wheel is not pure: {wheel}"
    return wheel


@pytest.fixture(scope="module")
def arm64_wheelhouse(arm64_rootfs: Path) -> Path:
    """aarch64 wheels of the agent's dependencies for the rootfs's Python, cached."""
    python = rootfs_python_version(arm64_rootfs)
    requirements = target_requirements(
        PYPROJECT, "aarch64", python_version=python, extras=ARM64_EXTRAS
    )
    platforms = manylinux_platforms("aarch64", rootfs_glibc(arm64_rootfs))
    try:
        return fetch_wheels(requirements, platforms, python_version=python)
    except RootfsError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def arm64_root(
    arm64_rootfs: Path, arm64_wheelhouse: Path, project_wheel: Path, build_dir: Path
) -> Iterator[Path]:
    """A throwaway arm64 root: the cached venv rootfs, plus the project installed offline.

    ``/proc`` and ``/dev`` are mounted in it for the module; all is unmounted and
    removed afterwards.
    """
    try:
        base = venv_rootfs(
            arm64_rootfs, arm64_wheelhouse, venv=VENV, log=build_dir / "venv-install.log"
        )
    except RootfsError as exc:
        pytest.fail(str(exc), pytrace=False)
    with scratch_root(base, build_dir / "run") as root:
        inbox = root / "tmp/project"
        inbox.mkdir(parents=True)
        shutil.copy2(project_wheel, inbox / project_wheel.name)
        with chroot_mounts(root, {"/wheels": arm64_wheelhouse}):
            install = [
                f"{VENV}/bin/pip",
                "install",
                "--no-index",
                "--find-links",
                "/wheels",
                "--find-links",
                "/tmp/project",
                f"{project_name()}[{','.join(ARM64_EXTRAS)}]",
            ]
            result = run_chroot(root, install, timeout=INSTALL_DEADLINE)
            assert result.returncode == 0, (
                f"offline install under emulation failed:\n{result.stdout}{result.stderr}"
            )
            yield root


# --------------------------------------------------------------------------- arm64


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF binary"
    return int.from_bytes(header[18:20], "little")


def test_the_rootfs_python_is_arm64_and_runs_under_emulation(arm64_root: Path) -> None:
    link = arm64_root / "usr/bin/python3"
    target = str(link.readlink()) if link.is_symlink() else link.name
    python = arm64_root / target.lstrip("/") if target.startswith("/") else link.parent / target
    assert elf_machine(python) == AARCH64_ELF_MACHINE
    for interpreter in ("python3", f"{VENV}/bin/python"):
        result = run_chroot(
            arm64_root, [interpreter, "-c", "import platform; print(platform.machine())"]
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "aarch64"


def test_the_agent_is_installed_offline_with_its_compiled_dependencies(
    arm64_root: Path,
) -> None:
    version = run_chroot(arm64_root, [f"{VENV}/bin/shoal-agent", "--version"], timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.split() == ["shoal-agent", project_version()]
    check = run_chroot(arm64_root, [f"{VENV}/bin/pip", "check"], timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    extensions = sorted((arm64_root / VENV.lstrip("/")).rglob("*.so"))
    assert extensions, "no compiled module in the venv: the aarch64 wheels were not used"
    for extension in extensions:
        assert elf_machine(extension) == AARCH64_ELF_MACHINE, extension


def project_version() -> str:
    import tomllib

    version: str = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    return version


class ChrootAgent(AgentProcess):
    """``shoal-agent`` from the arm64 venv, run in the rootfs under emulation.

    The flags are AgentProcess's; paths under the root are passed as seen inside
    it. The environment is the chroot's own, not this machine's venv.
    """

    ready_deadline = AGENT_READY_DEADLINE

    def __init__(self, root: Path, **kwargs: object) -> None:
        self.root = root
        super().__init__(root / "var/lib/shoal-test", **kwargs)  # type: ignore[arg-type]

    def inside(self, arg: str) -> str:
        path = Path(arg)
        return f"/{path.relative_to(self.root)}" if path.is_relative_to(self.root) else arg

    def argv(self) -> list[str]:
        flags = super().argv()
        flags = flags[flags.index("--server") :]
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return [chroot, str(self.root), f"{VENV}/bin/shoal-agent", *map(self.inside, flags)]

    def base_environment(self) -> dict[str, str]:
        return dict(CHROOT_ENV)


@pytest.fixture
def arm64_agent(arm64_root: Path, nats_server: NatsServer, keys: Keys) -> Iterator[ChrootAgent]:
    trust = arm64_root / "etc/shoal/trust.toml"
    trust.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(keys.trust, trust)
    agent = ChrootAgent(
        arm64_root,
        server=nats_server.url,
        host_id=f"arm64-{free_port()}",
        docker_host="unix:///nonexistent/docker.sock",
        labels={"board": "emulated"},
        trust=trust,
    )
    try:
        yield agent
    finally:
        agent.stop()


async def ping_arm64(url: str, signer: Signer) -> FleetResult[AgentFacts]:
    async with Fleet(NatsOptions(servers=url), signer=signer, timeout=30) as fleet:
        return await fleet.ping(selector=Selector(labels=("arch=arm64",)))


async def registry_record(url: str, host_id: str) -> AgentRecord | None:
    async with Fleet(NatsOptions(servers=url)) as fleet:
        return next((r for r in await fleet.agents() if r.host_id == host_id), None)


@pytest.mark.nats
def test_the_agent_answers_ping_as_arm64_under_emulation(
    arm64_agent: ChrootAgent, nats_server: NatsServer, keys: Keys
) -> None:
    arm64_agent.start()
    host = arm64_agent.host_id

    def registered() -> bool:
        record = asyncio.run(registry_record(nats_server.url, host))
        return record is not None and record.online

    poll(f"{host}'s heartbeat in the registry", registered, 60)
    result = asyncio.run(ping_arm64(nats_server.url, keys.admin.signer))
    assert result.targeted == [host], "the arm64 agent is the only arm64 host"
    assert not result.errors and not result.missing, result
    facts = result.replies[host]
    assert (facts.arch, facts.variant, facts.os) == ("arm64", "", "linux")
    assert facts.labels == {"board": "emulated"}
    assert facts.agent_version == project_version()
    assert not facts.docker.reachable, "no Docker engine is reachable in the rootfs"
    assert not facts.insecure, "the agent runs with the session's trust file"

    assert arm64_agent.stop() == 0, arm64_agent.log()

    def offline() -> bool:
        record = asyncio.run(registry_record(nats_server.url, host))
        return record is not None and not record.online

    poll(f"{host} shown offline after it stopped", offline, 30)
