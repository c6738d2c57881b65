"""Compose files: read one into the ServiceSpecs that ``shoal deploy -f`` sends to hosts.

Shoal reads the part of the compose specification that maps onto one container of a
service per host. Everything else a file sets is an error naming the key, never
silently ignored; ``x-`` extension fields are ignored as the specification says, and
``version`` and ``name`` are ignored at the top level.

YAML is read with YAML 1.2 scalars (as Docker Compose does): ``no``, ``on`` and
``off`` are strings, ``22:22`` is a string, not a base-60 number, and a key given twice
in one mapping is an error. Variables are interpolated in every string value (never
in keys) as Compose does, from the given environment plus a ``.env`` file next to the
compose file (the environment wins).
"""

from __future__ import annotations

from .loader import load_compose
from .project import ComposeError, ComposeProject

__all__ = ["ComposeError", "ComposeProject", "load_compose"]
