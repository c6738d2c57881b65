"""The agent's deploy policy: what a deploy or pull may ask of this host.

A TOML file given with ``--policy FILE`` (env ``SHOAL_POLICY``)::

    [images]
    allow = ["registry.example.com/*", "127.0.0.1:*/*"]   # absent: any image

    [containers]
    privileged = false        # privileged: true
    host_network = false      # network_mode: host
    host_pid = false          # pid: host
    host_ipc = false          # ipc: host
    share_namespaces = false  # network_mode/pid/ipc: container:NAME or service:NAME
    devices = []              # host device paths (globs), e.g. ["/dev/ttyUSB*"]
    capabilities = []         # cap_add names, e.g. ["NET_ADMIN"] (case and CAP_ ignored)
    security_opt = []         # security_opt entries (globs), e.g. ["apparmor=*"]
    bind_mounts = []          # host paths bind mounts may use (globs), e.g. ["/srv/app/*"]
    network_drivers = []      # network drivers besides bridge and overlay, e.g. ["macvlan"]
    volume_types = []         # local volume types with driver_opts besides tmpfs, e.g. ["nfs"]

    [exec]
    allow = true              # shoal exec (commands in running containers)
    run = true                # shoal run (one-off containers; the rules above apply)
    commands = []             # command lines allowed (globs), e.g. ["pg_dump *"]; empty: any

Without a file the agent uses :meth:`Policy.default`: any image, and none of
the container privileges above. A refusal raises :class:`PolicyDenied`
(``policy_denied``) naming the rule that fired.

Matching is lexical and deliberately strict. Globs are :func:`fnmatch.fnmatchcase`
patterns, case-sensitive, and ``*`` also matches ``/``. Host paths are made
canonical (``//`` and ``.`` collapsed, trailing ``/`` dropped) before they are
matched; a path with a ``..`` component, a relative path or a control character
is refused outright, and ``/`` itself only matches a pattern that is literally
``/``. Symbolic links are not resolved: keep allowed directories out of reach
of untrusted users.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from shoal.protocol.envelope import summarize_validation_error
from shoal.protocol.errors import ErrorCode, ShoalError
from shoal.protocol.service import NetworkSpec, ServiceSpec, VolumeSpec

MAX_PATTERNS = 256
MAX_PATTERN_LENGTH = 1024

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CAPABILITY_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_NAMESPACE_SHARING_PREFIXES = ("container:", "service:")

# security_opt entries that only take privileges away: always allowed.
ALWAYS_ALLOWED_SECURITY_OPT = frozenset(
    {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
)


class PolicyError(ShoalError):
    """The policy file cannot be read or is invalid."""


class PolicyDenied(ShoalError):
    """The host's policy does not allow what the request asks for."""

    code = ErrorCode.POLICY_DENIED


# --- helpers -------------------------------------------------------------------------


def _has_control(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def normalize_capability(name: str) -> str | None:
    """``cap_sys_admin`` and ``SYS_ADMIN`` -> ``SYS_ADMIN``; None if not a capability name."""
    upper = name.upper()
    if upper.startswith("CAP_"):
        upper = upper[4:]
    return upper if _CAPABILITY_RE.fullmatch(upper) else None


def canonical_host_path(path: str) -> str:
    """The canonical form of an absolute host path, or ValueError saying why it is refused.

    Refused: empty or relative paths, control characters, and ``..`` components
    (with a symbolic link before it, ``..`` resolves somewhere other than where
    it appears to point, so no lexical check of it can be trusted).
    """
    if not path:
        raise ValueError("an empty path")
    if _has_control(path):
        raise ValueError("a path with control characters")
    if not path.startswith("/"):
        raise ValueError("a relative path (host paths must be absolute)")
    if ".." in path.split("/"):
        raise ValueError("a path with a '..' component")
    # posixpath.normpath keeps a leading '//' (POSIX leaves it implementation-defined).
    return posixpath.normpath("/" + path.lstrip("/"))


def _path_allowed(path: str, patterns: tuple[str, ...]) -> bool:
    """Whether canonical ``path`` matches one of the (canonical) ``patterns``."""
    if path == "/":
        return "/" in patterns
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _check_patterns(value: tuple[str, ...], what: str) -> tuple[str, ...]:
    if len(value) > MAX_PATTERNS:
        raise ValueError(f"at most {MAX_PATTERNS} {what}")
    for pattern in value:
        if not pattern or len(pattern) > MAX_PATTERN_LENGTH:
            raise ValueError(f"{what} must be 1 to {MAX_PATTERN_LENGTH} characters")
        if _has_control(pattern):
            raise ValueError(f"{pattern[:60]!r} has control characters")
        if pattern.strip() != pattern:
            raise ValueError(f"{pattern[:60]!r} has leading or trailing white space")
    return value


def _check_path_patterns(value: tuple[str, ...], what: str) -> tuple[str, ...]:
    _check_patterns(value, what)
    canonical = []
    for pattern in value:
        try:
            canonical.append(canonical_host_path(pattern))
        except ValueError as exc:
            raise ValueError(f"{pattern[:60]!r} is {exc}") from None
    return tuple(dict.fromkeys(canonical))


# --- the model -------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImagesPolicy(_Section):
    allow: tuple[StrictStr, ...] | None = Field(
        default=None,
        description="Globs over the image reference as sent; absent means any image.",
    )

    @field_validator("allow")
    @classmethod
    def _allow(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(
                "an empty list would refuse every image; list the allowed images, "
                "or leave 'allow' out to allow any image"
            )
        return _check_patterns(value, "image patterns")


class ContainersPolicy(_Section):
    privileged: StrictBool = False
    host_network: StrictBool = False
    host_pid: StrictBool = False
    host_ipc: StrictBool = False
    share_namespaces: StrictBool = False
    devices: tuple[StrictStr, ...] = ()
    capabilities: tuple[StrictStr, ...] = ()
    security_opt: tuple[StrictStr, ...] = ()
    bind_mounts: tuple[StrictStr, ...] = ()
    network_drivers: tuple[StrictStr, ...] = ()
    volume_types: tuple[StrictStr, ...] = ()

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_path_patterns(value, "device patterns")

    @field_validator("bind_mounts")
    @classmethod
    def _bind_mounts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_path_patterns(value, "bind mount patterns")

    @field_validator("security_opt")
    @classmethod
    def _security_opt(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(value, "security_opt patterns")

    @field_validator("capabilities")
    @classmethod
    def _capabilities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _check_patterns(value, "capabilities")
        names = []
        for item in value:
            name = normalize_capability(item)
            if name is None:
                raise ValueError(f"{item[:60]!r} is not a capability name (e.g. NET_ADMIN)")
            names.append(name)
        return tuple(dict.fromkeys(names))


class ExecPolicy(_Section):
    """``shoal exec`` and ``shoal run`` on this host (the operator role is needed too)."""

    allow: StrictBool = True
    run: StrictBool = True
    commands: tuple[StrictStr, ...] = ()
    """Globs a command line (its words joined by spaces) must match; empty: any."""

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(value, "command patterns")


class UpgradePolicy(_Section):
    """``shoal agents upgrade`` on this host (the admin role is needed too)."""

    allow: StrictBool = True
    images: tuple[StrictStr, ...] = ()
    """Globs the new agent image must match; empty: any image."""
    versions: tuple[StrictStr, ...] = ()
    """Globs the new version must match (an agent under systemd); empty: any version."""

    @field_validator("images")
    @classmethod
    def _images(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(value, "upgrade image patterns")

    @field_validator("versions")
    @classmethod
    def _versions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_patterns(value, "upgrade version patterns")


class Policy(BaseModel):
    """What deploys and pulls may ask of this host."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: ImagesPolicy = Field(default_factory=ImagesPolicy)
    containers: ContainersPolicy = Field(default_factory=ContainersPolicy)
    exec: ExecPolicy = Field(default_factory=ExecPolicy)
    upgrade: UpgradePolicy = Field(default_factory=UpgradePolicy)

    @classmethod
    def default(cls) -> Policy:
        """The policy of an agent without a policy file: any image, no privileges."""
        return cls()

    def summary(self) -> str:
        """One line for the agent's log."""
        c = self.containers
        images = (
            "any image"
            if self.images.allow is None
            else f"{len(self.images.allow)} image pattern(s)"
        )
        flags = [
            name
            for name, on in (
                ("privileged", c.privileged),
                ("host_network", c.host_network),
                ("host_pid", c.host_pid),
                ("host_ipc", c.host_ipc),
                ("share_namespaces", c.share_namespaces),
            )
            if on
        ]
        lists = [
            f"{len(items)} {name}"
            for name, items in (
                ("devices", c.devices),
                ("capabilities", c.capabilities),
                ("security_opt", c.security_opt),
                ("bind_mounts", c.bind_mounts),
            )
            if items
        ]
        allowed = ", ".join(flags + lists) or "no container privileges"
        return f"{images}; allows {allowed}"


def parse_policy(text: str, source: str = "policy file") -> Policy:
    """Parse policy TOML; raises :class:`PolicyError` naming ``source`` and the field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from exc
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {summarize_validation_error(exc)}") from exc


def load_policy(path: Path) -> Policy:
    """Read and parse the policy file at ``path``; raises :class:`PolicyError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy file {path}: not UTF-8 text: {exc}") from exc
    return parse_policy(text, str(path))


# --- checks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    rule: str
    value: Any
    message: str


def _denied(denials: list[Denial], service: str | None) -> PolicyDenied:
    first = denials[0]
    message = first.message
    if len(denials) > 1:
        message += f" (and {len(denials) - 1} more)"
    detail: dict[str, Any] = {"rule": first.rule, "value": first.value}
    if service is not None:
        detail["service"] = service
    if len(denials) > 1:
        detail["denials"] = [
            {"rule": d.rule, "value": d.value, "message": d.message} for d in denials
        ]
    return PolicyDenied(message, detail=detail)


def _image_denial(policy: Policy, image: str) -> Denial | None:
    patterns = policy.images.allow
    if patterns is None:
        return None
    if not _has_control(image) and any(fnmatch.fnmatchcase(image, p) for p in patterns):
        return None
    return Denial(
        "images.allow", image, f"policy denies image {image[:200]!r} (not in images.allow)"
    )


def _unlisted(rule: str, value: str, patterns: tuple[str, ...], what: str) -> Denial | None:
    """A denial unless ``patterns`` is empty or ``value`` matches one of them (a value with
    control characters matches none: ``*`` would match a newline)."""
    if not patterns or (
        not _has_control(value) and any(fnmatch.fnmatchcase(value, p) for p in patterns)
    ):
        return None
    return Denial(rule, value[:200], f"policy denies {what} {value[:200]!r} (not in {rule})")


def check_command(policy: Policy, command: tuple[str, ...], *, run: bool = False) -> None:
    """Raise :class:`PolicyDenied` unless ``exec`` (or ``run``) of ``command`` is allowed."""
    rule = "exec.run" if run else "exec.allow"
    allowed = policy.exec.run if run else policy.exec.allow
    denial = _flag(rule, allowed, True, "shoal run" if run else "shoal exec") or _unlisted(
        "exec.commands", " ".join(command), policy.exec.commands, "the command"
    )
    if denial is not None:
        raise _denied([denial], None)


def check_upgrade(policy: Policy, image: str) -> None:
    """Raise :class:`PolicyDenied` unless this agent may be replaced by ``image``."""
    denial = _flag("upgrade.allow", policy.upgrade.allow, True, "shoal agents upgrade") or (
        _unlisted("upgrade.images", image, policy.upgrade.images, "the agent image")
    )
    if denial is not None:
        raise _denied([denial], None)


def check_upgrade_version(policy: Policy, version: str) -> None:
    """Raise :class:`PolicyDenied` unless this agent may install ``version`` beside itself."""
    denial = _flag("upgrade.allow", policy.upgrade.allow, True, "shoal agents upgrade") or (
        _unlisted("upgrade.versions", version, policy.upgrade.versions, "the agent version")
    )
    if denial is not None:
        raise _denied([denial], None)


def check_run_network(policy: Policy, network: str) -> None:
    """A one-off container's network: ``host`` and ``container:`` need the policy."""
    denials = _namespace_denials(policy, "network", network, "containers.host_network")
    if denials:
        raise _denied(denials, None)


def check_image(policy: Policy, image: str) -> None:
    """Raise :class:`PolicyDenied` unless ``images.allow`` admits ``image`` (pull, deploy)."""
    denial = _image_denial(policy, image)
    if denial is not None:
        raise _denied([denial], None)


def _flag(rule: str, allowed: bool, value: Any, what: str) -> Denial | None:
    if allowed:
        return None
    return Denial(rule, value, f"policy denies {what} ({rule} = false)")


def _namespace_denials(policy: Policy, field: str, value: str | None, rule: str) -> list[Denial]:
    """``host`` and ``container:``/``service:`` modes of network_mode, pid or ipc."""
    if value is None:
        return []
    c = policy.containers
    mode = value.strip().lower()
    if mode == "host":
        allowed = {
            "containers.host_network": c.host_network,
            "containers.host_pid": c.host_pid,
            "containers.host_ipc": c.host_ipc,
        }[rule]
        denial = _flag(rule, allowed, value, f"{field} {value[:200]!r}")
        return [denial] if denial else []
    if mode.startswith(_NAMESPACE_SHARING_PREFIXES):
        denial = _flag(
            "containers.share_namespaces",
            c.share_namespaces,
            value,
            f"{field} {value[:200]!r}",
        )
        return [denial] if denial else []
    if _has_control(value):
        return [Denial(rule, value, f"policy denies {field} {value[:200]!r}: control characters")]
    return []


def _device_denial(policy: Policy, device: str) -> Denial | None:
    rule = "containers.devices"
    if _has_control(device):
        return Denial(rule, device, f"policy denies device {device[:200]!r}: control characters")
    parts = device.split(":")
    if len(parts) > 3:
        return Denial(
            rule, device, f"policy denies device {device[:200]!r}: not HOST[:CONTAINER[:PERMS]]"
        )
    try:
        host = canonical_host_path(parts[0])
    except ValueError as exc:
        return Denial(rule, device, f"policy denies device {device[:200]!r}: {exc}")
    if _path_allowed(host, policy.containers.devices):
        return None
    return Denial(rule, device, f"policy denies device {host[:200]!r} (not in {rule})")


def _capability_denial(policy: Policy, cap: str) -> Denial | None:
    rule = "containers.capabilities"
    name = normalize_capability(cap)
    if name is None:
        return Denial(rule, cap, f"policy denies capability {cap[:100]!r}: not a capability name")
    allowed = policy.containers.capabilities
    if name in allowed or "ALL" in allowed:
        return None
    return Denial(rule, cap, f"policy denies capability {name} (not in {rule})")


def _security_opt_denial(policy: Policy, option: str) -> Denial | None:
    rule = "containers.security_opt"
    if _has_control(option):
        return Denial(
            rule, option, f"policy denies security_opt {option[:200]!r}: control characters"
        )
    if option in ALWAYS_ALLOWED_SECURITY_OPT:
        return None
    if any(fnmatch.fnmatchcase(option, p) for p in policy.containers.security_opt):
        return None
    return Denial(rule, option, f"policy denies security_opt {option[:200]!r} (not in {rule})")


def _mount_denial(policy: Policy, kind: str, source: str) -> Denial | None:
    rule = "containers.bind_mounts"
    if kind != "bind":
        # A named volume. A path-like name would be a bind in docker's short syntax.
        if source.startswith(("/", ".", "~")) or "/" in source or _has_control(source):
            return Denial(
                rule, source, f"policy denies volume source {source[:200]!r}: not a volume name"
            )
        return None
    try:
        path = canonical_host_path(source)
    except ValueError as exc:
        return Denial(rule, source, f"policy denies bind mount of {source[:200]!r}: {exc}")
    if _path_allowed(path, policy.containers.bind_mounts):
        return None
    return Denial(rule, source, f"policy denies bind mount of {path[:200]!r} (not in {rule})")


def service_denials(policy: Policy, spec: ServiceSpec) -> list[Denial]:
    """Every way ``spec`` breaks ``policy`` (empty if it complies)."""
    c = policy.containers
    found: list[Denial | None] = [_image_denial(policy, spec.image)]
    if spec.privileged:
        found.append(_flag("containers.privileged", c.privileged, True, "privileged mode"))
    denials = [d for d in found if d is not None]
    denials += _namespace_denials(
        policy, "network_mode", spec.network_mode, "containers.host_network"
    )
    denials += _namespace_denials(policy, "pid", spec.pid, "containers.host_pid")
    denials += _namespace_denials(policy, "ipc", spec.ipc, "containers.host_ipc")
    more: list[Denial | None] = [_device_denial(policy, d) for d in spec.devices]
    more += [_capability_denial(policy, cap) for cap in spec.cap_add]
    more += [_security_opt_denial(policy, opt) for opt in spec.security_opt]
    more += [_mount_denial(policy, v.type, v.source) for v in spec.volumes]
    more += [_volume_options_denial(policy, v) for v in spec.volumes if v.driver_opts]
    more += [_network_denial(policy, a.network) for a in spec.networks]
    denials += [d for d in more if d is not None]
    return denials


def _volume_options_denial(policy: Policy, volume: VolumeSpec) -> Denial | None:
    """A local volume with options: tmpfs is harmless; a bind of a host path is a bind
    mount (checked as one); other types (nfs, cifs, ...) need ``volume_types``."""
    opts = volume.driver_opts
    kind = opts.get("type", "")
    if "bind" in opts.get("o", "").split(","):
        return _mount_denial(policy, "bind", opts.get("device", ""))
    if kind == "tmpfs" or kind in policy.containers.volume_types:
        return None
    rule = "containers.volume_types"
    return Denial(
        rule,
        kind,
        f"policy denies volume {volume.source!r} of type {kind[:60]!r} (not in {rule})",
    )


SAFE_NETWORK_DRIVERS = frozenset({"bridge", "overlay"})
"""Drivers that keep a container off the host's own interfaces: always allowed."""


def _network_denial(policy: Policy, network: NetworkSpec) -> Denial | None:
    c = policy.containers
    if network.external and network.name == "host":
        return _flag("containers.host_network", c.host_network, True, "the host network")
    driver = network.driver or "bridge"
    if network.external or driver in SAFE_NETWORK_DRIVERS or driver in c.network_drivers:
        return None
    rule = "containers.network_drivers"
    return Denial(
        rule,
        driver,
        f"policy denies network driver {driver[:100]!r} of network {network.name!r}"
        f" (not in {rule})",
    )


def check_service(policy: Policy, spec: ServiceSpec) -> None:
    """Raise :class:`PolicyDenied` naming the first rule ``spec`` breaks (all in detail)."""
    denials = service_denials(policy, spec)
    if denials:
        raise _denied(denials, spec.name)


__all__ = [
    "ALWAYS_ALLOWED_SECURITY_OPT",
    "ContainersPolicy",
    "Denial",
    "ExecPolicy",
    "ImagesPolicy",
    "Policy",
    "PolicyDenied",
    "PolicyError",
    "canonical_host_path",
    "check_command",
    "check_image",
    "check_run_network",
    "check_service",
    "load_policy",
    "normalize_capability",
    "parse_policy",
    "service_denials",
]
