"""Architecture names in the OCI spelling used by image platforms."""

from __future__ import annotations

_ARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm", "v8"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armhf": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armel": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def normalize_arch(machine: str) -> tuple[str, str]:
    """Map a kernel machine name (``uname -m``) to an OCI ``(architecture, variant)``."""
    key = machine.strip().lower()
    return _ARCH.get(key, (key or "unknown", ""))
