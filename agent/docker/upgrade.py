"""Agent self-upgrade in a container: a helper container swaps the agent for a new image.

The agent cannot replace its own container from inside it (stopping it ends the agent),
so it starts a helper container from its own image, with only the Docker socket, and
returns. The helper (``python -m shoal.agent.docker.upgrade``) then:

1. creates ``<name>-shoal-next`` from the new image with the old container's settings:
   its environment and labels (less what the old image set), mounts (anonymous volumes
   too, so the journal is kept), networks with their aliases, restart policy, and
   whatever the old container set over its image (command, health check, stop signal);
2. stops the old agent (it says it is leaving) and starts the new one;
3. waits until the new container passes its image's health check twice in a row (the
   agent's ``--check-health``: connected to NATS) and, if asked, reports the expected
   version, within the deadline;
4. on success removes the old container (its volumes stay) and gives the new one the old
   name; otherwise prints the new agent's last log lines, removes it and starts the old
   agent again.

The helper stays behind, exited, with its log (``docker logs``) until the next upgrade
removes it; its exit code is the outcome (0 upgraded, 1 rolled back, 2 could not begin).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from shoal.protocol import Conflict, DockerError, NotFound

from .errors import translate_docker_errors

HELPER_LABEL = "shoal.upgrade.of"
"""On a helper container: the id of the agent container it replaces."""
NEXT_SUFFIX = "-shoal-next"
REPLY_GRACE = 2.0
"""Seconds the helper waits before stopping the agent, so the agent's reply gets out."""
POLL = 1.0
UPGRADED, ROLLED_BACK, NOT_BEGUN = 0, 1, 2

_CONTAINER_ID = re.compile(r"/containers/([0-9a-f]{64})/")
_CGROUP_ID = re.compile(r"(?:docker[-/]|/)([0-9a-f]{64})(?:\.scope)?\s*$", re.MULTILINE)


def own_container_id(
    mountinfo: str | None = None, cgroup: str | None = None, env: Mapping[str, str] = os.environ
) -> str | None:
    """The id of the container this process runs in, or None outside a container.

    ``SHOAL_CONTAINER_ID`` wins; else the engine's per-container files mounted into it
    (``/etc/hostname`` and others, in /proc/self/mountinfo), else the cgroup path.
    """
    given = env.get("SHOAL_CONTAINER_ID", "").strip()
    if given:
        return given if re.fullmatch(r"[0-9a-f]{12,64}", given) else None
    for text, pattern in (
        (mountinfo if mountinfo is not None else _read("/proc/self/mountinfo"), _CONTAINER_ID),
        (cgroup if cgroup is not None else _read("/proc/self/cgroup"), _CGROUP_ID),
    ):
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def with_version(image: str, version: str) -> str:
    """``image`` with its tag (and digest) replaced by ``version``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    return f"{name}:{version}"


def _user_set(container: Mapping[str, Any], image: Mapping[str, Any], key: str) -> Any:
    """The container's ``key`` if it differs from its image's (set at create), else None."""
    value = container.get(key)
    return value if value and value != image.get(key) else None


def replacement(old: Mapping[str, Any], old_image: Mapping[str, Any], image: str) -> dict[str, Any]:
    """Keyword arguments of ``APIClient.create_container`` for the new agent container."""
    config: Mapping[str, Any] = old.get("Config") or {}
    image_config: Mapping[str, Any] = old_image.get("Config") or {}
    image_env = set(image_config.get("Env") or [])
    image_labels: Mapping[str, str] = image_config.get("Labels") or {}
    host_config = dict(old.get("HostConfig") or {})
    # Anonymous volumes (the image's VOLUME) keep their data: mount the same volumes.
    mounted = {m.get("Target") for m in host_config.get("Mounts") or []}
    mounted |= {b.split(":")[1] for b in host_config.get("Binds") or [] if ":" in b}
    extra = [
        {"Type": "volume", "Source": m["Name"], "Target": m["Destination"]}
        for m in old.get("Mounts") or []
        if m.get("Type") == "volume" and m.get("Name") and m.get("Destination") not in mounted
    ]
    if extra:
        host_config["Mounts"] = list(host_config.get("Mounts") or []) + extra
    kwargs: dict[str, Any] = {
        "image": image,
        "environment": [e for e in config.get("Env") or [] if e not in image_env],
        "labels": {
            k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v
        },
        "host_config": host_config,
        "command": _user_set(config, image_config, "Cmd"),
        "entrypoint": _user_set(config, image_config, "Entrypoint"),
        "healthcheck": _user_set(config, image_config, "Healthcheck"),
        "stop_signal": _user_set(config, image_config, "StopSignal"),
        "user": _user_set(config, image_config, "User"),
        "working_dir": _user_set(config, image_config, "WorkingDir"),
        "domainname": config.get("Domainname") or None,
        "tty": bool(config.get("Tty")),
        "stdin_open": bool(config.get("OpenStdin")),
    }
    if config.get("StopTimeout") is not None:
        kwargs["stop_timeout"] = config["StopTimeout"]
    old_id = str(old.get("Id") or "")
    hostname = config.get("Hostname") or ""
    if hostname and not old_id.startswith(hostname):  # the engine's default: the short id
        kwargs["hostname"] = hostname
    networks = _networks(old)
    if networks:
        first = next(iter(networks))
        kwargs["networking_config"] = {"EndpointsConfig": {first: networks[first]}}
    return {k: v for k, v in kwargs.items() if v is not None}


def _networks(old: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The user networks the container is on, with its aliases (not its short id)."""
    mode = str((old.get("HostConfig") or {}).get("NetworkMode") or "")
    if mode in ("host", "none", "default", "bridge") or mode.startswith("container:"):
        return {}
    short = str(old.get("Id") or "")[:12]
    out: dict[str, dict[str, Any]] = {}
    for name, endpoint in ((old.get("NetworkSettings") or {}).get("Networks") or {}).items():
        aliases = [a for a in (endpoint or {}).get("Aliases") or [] if a != short]
        out[name] = {"Aliases": aliases} if aliases else {}
    return out


# --- in the agent: start the helper -----------------------------------------------------


def start_helper(
    client: docker.DockerClient,
    own_id: str,
    image: str,
    *,
    deadline: float,
    version: str | None,
    socket: str,
    python: str,
) -> str:
    """Start the helper that replaces container ``own_id`` with ``image``; its id."""
    api = client.api
    with translate_docker_errors(f"inspect the agent's container {own_id[:12]}"):
        own = api.inspect_container(own_id)
    with translate_docker_errors("list earlier upgrade helpers"):
        helpers = api.containers(all=True, filters={"label": HELPER_LABEL})
    for helper in helpers:
        if helper.get("State") == "running":
            raise Conflict(
                f"an upgrade of this agent is already in progress (helper {helper['Id'][:12]})"
            )
        with translate_docker_errors("remove an earlier upgrade helper"):
            api.remove_container(helper["Id"], force=True)
    mount = next((m for m in own.get("Mounts") or [] if m.get("Destination") == socket), None)
    if mount is None or not mount.get("Source"):
        raise NotFound(
            f"the agent's container has no Docker socket mounted at {socket}: the upgrade"
            " helper needs it"
        )
    config = own.get("Config") or {}
    host = own.get("HostConfig") or {}
    argv = [own["Id"], image, "--deadline", f"{deadline:g}"]
    if version:
        argv += ["--version", version]
    with translate_docker_errors("start the upgrade helper"):
        created = api.create_container(
            image=own["Image"],  # the agent's own image, by id: it runs this very code
            entrypoint=[python, "-m", "shoal.agent.docker.upgrade"],
            command=argv,
            name=f"shoal-upgrade-{own['Id'][:12]}-{int(time.time())}",
            labels={HELPER_LABEL: own["Id"]},
            environment=[f"DOCKER_HOST=unix://{socket}"],
            user=config.get("User") or None,
            host_config=api.create_host_config(
                binds=[f"{mount['Source']}:{socket}"],
                network_mode="none",
                group_add=host.get("GroupAdd") or None,
                security_opt=host.get("SecurityOpt") or None,
            ),
        )
        helper_id = str(created["Id"])
        api.start(helper_id)
    return helper_id


# --- in the helper: the swap ------------------------------------------------------------


def swap(
    client: docker.DockerClient,
    old_id: str,
    image: str,
    *,
    deadline: float,
    version: str | None,
    say: Callable[[str], None],
    grace: float = REPLY_GRACE,
) -> int:
    """Replace the agent container ``old_id`` by one of ``image``; the exit code."""
    api = client.api
    try:
        old = api.inspect_container(old_id)
        old_image = api.inspect_image(old["Image"])
        api.inspect_image(image)
    except docker.errors.APIError as exc:
        say(f"cannot begin: {exc}")
        return NOT_BEGUN
    name = str(old["Name"]).lstrip("/")
    next_name = name + NEXT_SUFFIX
    try:
        api.remove_container(next_name, force=True)  # left by an interrupted upgrade
    except docker.errors.APIError as exc:
        if exc.status_code != 404:
            say(f"cannot remove the earlier {next_name}: {exc}")
            return NOT_BEGUN
    try:
        new_id = str(
            api.create_container(name=next_name, **replacement(old, old_image, image))["Id"]
        )
        for network, endpoint in list(_networks(old).items())[1:]:
            api.connect_container_to_network(new_id, network, aliases=endpoint.get("Aliases"))
    except docker.errors.APIError as exc:
        say(f"cannot create the new agent container: {exc}")
        return NOT_BEGUN
    time.sleep(grace)  # the agent's reply to the upgrade request is on its way
    stop_timeout = int((old.get("Config") or {}).get("StopTimeout") or 30)
    say(f"stopping the agent {name} ({old_id[:12]}, {old['Config'].get('Image')})")
    upgraded = False
    try:
        api.stop(old_id, timeout=stop_timeout)
        say(f"starting {image} as {next_name} ({new_id[:12]})")
        api.start(new_id)
        upgraded = _healthy(api, new_id, deadline=deadline, version=version, say=say)
    except Exception as exc:  # whatever happened, the old agent comes back
        say(f"the new agent did not start: {exc}")
    if upgraded:
        try:
            api.remove_container(old_id, force=True)  # v=False: its volumes stay
            api.rename(new_id, name)
        except docker.errors.APIError as exc:
            say(f"upgraded, but the old container is not cleaned up: {exc}")
        say(f"upgraded: {name} runs {image}")
        return UPGRADED
    try:
        for line in api.logs(new_id, tail=40).decode(errors="replace").splitlines():
            say(f"new agent | {line}")
    except docker.errors.APIError:
        pass
    try:
        api.remove_container(new_id, force=True)
    except docker.errors.APIError as exc:
        say(f"rollback: cannot remove the new agent: {exc}")
    try:
        api.start(old_id)
    except docker.errors.APIError as exc:
        say(f"rollback: cannot start the old agent again: {exc}")
    say(f"rolled back: {name} runs {old['Config'].get('Image')} again")
    return ROLLED_BACK


def _healthy(
    api: docker.APIClient,
    container_id: str,
    *,
    deadline: float,
    version: str | None,
    say: Callable[[str], None],
) -> bool:
    """Whether the new agent passes its health check twice in a row before the deadline."""
    inspected = api.inspect_container(container_id)
    test = list(((inspected.get("Config") or {}).get("Healthcheck") or {}).get("Test") or [])
    check: list[str] | None = None
    if test[:1] == ["CMD"]:
        check = test[1:]
    elif test[:1] == ["CMD-SHELL"]:
        check = ["/bin/sh", "-c", " ".join(test[1:])]
    end = time.monotonic() + deadline
    passed = 0
    while time.monotonic() < end:
        state = api.inspect_container(container_id)["State"]
        if not state.get("Running") or state.get("Restarting"):
            say(f"the new agent is {state.get('Status')} (exit code {state.get('ExitCode')})")
            return False
        ok = _exec(api, container_id, check) == 0 if check else True
        passed = passed + 1 if ok else 0
        if passed >= (2 if check else 10):  # without a check: running for ten seconds
            break
        time.sleep(POLL)
    else:
        say(f"the new agent was not healthy within {deadline:g}s")
        return False
    if version:
        output = _output(api, container_id, ["shoal-agent", "--version"])
        if version not in output.split():
            say(f"the new agent reports {output.strip()!r}, not version {version}")
            return False
    say("the new agent is healthy")
    return True


def _exec(api: docker.APIClient, container_id: str, command: list[str]) -> int | None:
    try:
        exec_id = api.exec_create(container_id, command)["Id"]
        api.exec_start(exec_id)
        code = api.exec_inspect(exec_id).get("ExitCode")
        return int(code) if code is not None else None
    except docker.errors.APIError:
        return None


def _output(api: docker.APIClient, container_id: str, command: list[str]) -> str:
    try:
        exec_id = api.exec_create(container_id, command)["Id"]
        return bytes(api.exec_start(exec_id)).decode(errors="replace")
    except docker.errors.APIError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shoal.agent.docker.upgrade",
        description="Replace a Shoal agent container by one of a new image (run by the agent).",
    )
    parser.add_argument("container", help="the agent container's id")
    parser.add_argument("image", help="the new agent image")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--version", default=None, help="the version the new agent must report")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}", flush=True)

    try:
        client = docker.from_env(version="auto", timeout=60)
    except docker.errors.DockerException as exc:
        say(f"cannot reach the Docker engine: {exc}")
        return NOT_BEGUN
    try:
        return swap(
            client,
            args.container,
            args.image,
            deadline=args.deadline,
            version=args.version,
            say=say,
        )
    except DockerError as exc:
        say(f"failed: {exc.message}")
        return NOT_BEGUN
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
