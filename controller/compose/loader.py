"""``load_compose``: a compose file, its ``.env`` and the environment, read for deploy."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .dotenv import dotenv_environment
from .files import SecretValues
from .project import ComposeError, ComposeProject
from .services import ServiceReader


def load_compose(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    services: Sequence[str] = (),
    project: str | None = None,
    profiles: Sequence[str] = (),
) -> ComposeProject:
    """Read a compose file into ServiceSpecs, in depends_on order.

    ``environ`` (default ``os.environ``) and a ``.env`` file next to the compose file
    supply the variables. ``services`` names the services to include (all when empty);
    a named service's dependencies that are not named are left out, and the named
    ones keep their depends_on order. ``project`` overrides the project name (else the
    file's ``name:``, else its folder's name); ``profiles`` are the active profiles
    (default: ``COMPOSE_PROFILES``). Raises ComposeError naming the file and key.
    """
    path = Path(path)
    env = dotenv_environment(path, os.environ if environ is None else environ)
    if not profiles and env.get("COMPOSE_PROFILES"):
        profiles = [p.strip() for p in env["COMPOSE_PROFILES"].split(",") if p.strip()]
    reader = ServiceReader(
        path, str(path), env, project=project, profiles=profiles, wanted=services
    )
    parsed, order = reader.read()
    if services:
        wanted = list(dict.fromkeys(services))
        unknown = [name for name in wanted if name not in parsed]
        if unknown:
            raise ComposeError(
                f"{path}: no such service: {', '.join(unknown)}"
                f" (services in the file: {', '.join(parsed)})"
            )
        order = [name for name in order if name in set(wanted)]
    return ComposeProject(
        path=path,
        services=[parsed[name].spec for name in order],
        update_config={n: u for n in order if (u := parsed[n].update) is not None},
        rollback_config={n: r for n in order if (r := parsed[n].rollback) is not None},
        warnings=reader.warnings,
        project=reader.project or "",
        values=SecretValues(reader.values),
        tasks={n for n in order if parsed[n].completes_for},
    )
