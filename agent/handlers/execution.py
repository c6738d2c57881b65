"""``exec`` (a command in a running container) and ``run`` (a one-off container).

Output goes to the caller as it comes, as ``stdout`` and ``stderr`` progress messages;
the result keeps up to ``capture`` bytes of each and the exit code. A command still
running at its timeout is killed (for ``exec``: its processes, found by their host pid,
which needs an agent that sees the host's processes; a one-off container is killed by
the engine) and reported ``timed_out``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel

from shoal.protocol import (
    OUTPUT_CHUNK,
    STDERR_PHASE,
    STDOUT_PHASE,
    Busy,
    Conflict,
    ExecArgs,
    ExecResult,
    NotFound,
    RunArgs,
    ShoalError,
    Verb,
)

from ..context import Handler, RequestContext
from ..engine import Stream
from ..streams import StreamClosed, ThreadedStream
from .containers import container_ref, resolve_target

log = logging.getLogger("shoal.agent")

MAX_RUNNING = 32
"""Commands one agent runs at once (exec and run); more are refused as busy."""
RUN_LABEL = "shoal.run"
_running: set[str] = set()


class _Output:
    def __init__(self, limit: int) -> None:
        self.streams = {STDOUT_PHASE: _Buffer(limit), STDERR_PHASE: _Buffer(limit)}

    @property
    def truncated(self) -> bool:
        return any(b.truncated for b in self.streams.values())


class _Buffer:
    """Keeps the first ``limit`` bytes of a stream and decodes what is sent on."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, chunk: bytes) -> str:
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > max(room, 0):
            self.truncated = True
        return str(self._decoder.decode(chunk))

    def flush(self) -> str:
        return str(self._decoder.decode(b"", True))

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


async def _pump(
    ctx: RequestContext,
    stream: Stream[tuple[str, bytes]],
    timeout: float,
    capture: int,
    kill: Callable[[], Awaitable[None]],
) -> tuple[_Output, bool]:
    """Send the output as progress until the stream ends; kill at the timeout."""
    output = _Output(capture)
    threaded: ThreadedStream[tuple[str, bytes]] = ThreadedStream(stream, name="shoal-exec")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    timed_out = False
    kill_grace = 0.0
    async with threaded:
        while True:
            wait = max(0.05, min(2.0, deadline - loop.time()))
            if timed_out:
                wait = max(0.05, kill_grace - loop.time())
            try:
                items = await threaded.batch(wait)
            except StreamClosed:
                if threaded.error is not None and not timed_out:
                    raise threaded.error from None
                break
            for name, data in items:
                text = output.streams[name].add(data)
                for start in range(0, len(text), OUTPUT_CHUNK):
                    await ctx.progress(name, text[start : start + OUTPUT_CHUNK])
            if not items and not timed_out:
                await ctx.progress("running", "")  # keeps the caller's silence timer at bay
            now = loop.time()
            if not timed_out and now >= deadline:
                timed_out = True
                kill_grace = now + 10.0
                await kill()
            elif timed_out and now >= kill_grace:
                break  # killed, but something holds the stream open: stop reading
    for name, buffer in output.streams.items():
        rest = buffer.flush()
        if rest:
            await ctx.progress(name, rest[:OUTPUT_CHUNK])
    return output, timed_out


def _descendants(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc (empty if /proc does not show it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    if not Path(f"/proc/{pid}").exists():
        return []
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _kill_tree(pid: int, container_id: str) -> bool:
    """SIGKILL an exec's processes, if they are this container's; False if not visible."""
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    if container_id not in cgroup:
        return False  # a pid of another namespace, or reused: never signal it
    for target in reversed(_descendants(pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)
    return True


def _slot() -> None:
    if len(_running) >= MAX_RUNNING:
        raise Busy(f"this agent already runs {len(_running)} commands; try again later")


async def handle_exec(ctx: RequestContext, args: ExecArgs) -> BaseModel:
    from ..policy import check_command

    check_command(ctx.host.policy(), args.command)
    container = await resolve_target(ctx, args.target)
    if not container.running:
        raise Conflict(
            f"container {container.name} is {container.status or 'not running'}",
            detail={"container": container.name},
        )
    _slot()
    started = time.monotonic()
    exec_id, stream = await ctx.calls.run(ctx.engine.exec_output, container.id, args)
    _running.add(ctx.request.id)
    killed: list[bool] = []

    async def kill() -> None:
        state = await ctx.calls.run(ctx.engine.exec_state, exec_id)
        done = state.pid > 0 and await asyncio.to_thread(_kill_tree, state.pid, container.id)
        killed.append(done)
        if not done:
            log.warning(
                "exec %s in %s timed out and its process is not visible to the agent: it"
                " goes on (run the agent with the host's pid namespace to kill it)",
                exec_id[:12],
                container.name,
            )

    try:
        async with ctx.host.outside_request_slot():
            output, timed_out = await _pump(ctx, stream, args.timeout, args.capture, kill)
        state = await ctx.calls.run(ctx.engine.exec_state, exec_id)
    finally:
        _running.discard(ctx.request.id)
    return ExecResult(
        exit_code=None if timed_out else state.exit_code,
        timed_out=timed_out,
        stdout=output.streams[STDOUT_PHASE].text(),
        stderr=output.streams[STDERR_PHASE].text(),
        truncated=output.truncated,
        duration=round(time.monotonic() - started, 3),
        container=container_ref(container),
    )


async def handle_run(ctx: RequestContext, args: RunArgs) -> BaseModel:
    from ..policy import check_command, check_image, check_run_network

    policy = ctx.host.policy()
    check_command(policy, args.command, run=True)
    check_image(policy, args.image)
    check_run_network(policy, args.network)
    _slot()
    started = time.monotonic()
    if await ctx.calls.run(ctx.engine.image_info, args.image) is None:
        if not args.pull:
            raise NotFound(f"image {args.image} is not on this host")
        await ctx.progress("pulling", f"pulling {args.image}")
        await ctx.calls.run(
            ctx.engine.pull_image, args.image, lambda *_: None, timeout=ctx.calls.long_timeout
        )
    name = f"shoal-run-{ctx.request.id[:12]}"
    labels = {RUN_LABEL: ctx.request.id}
    container_id, stream = await ctx.calls.run(ctx.engine.run_output, args, name, labels)
    _running.add(ctx.request.id)

    async def kill() -> None:
        with contextlib.suppress(ShoalError):
            await ctx.calls.run(ctx.engine.kill_container, container_id)

    try:
        async with ctx.host.outside_request_slot():
            output, timed_out = await _pump(ctx, stream, args.timeout, args.capture, kill)
        code = await ctx.calls.run(ctx.engine.wait_exit, container_id, 10.0, timeout=30.0)
    finally:
        _running.discard(ctx.request.id)
        try:
            remove = functools.partial(ctx.engine.remove_container, force=True, volumes=True)
            await ctx.calls.run(remove, container_id)
        except ShoalError as exc:
            log.error("could not remove one-off container %s: %s", name, exc.message)
    return ExecResult(
        exit_code=None if timed_out else code,
        timed_out=timed_out,
        stdout=output.streams[STDOUT_PHASE].text(),
        stderr=output.streams[STDERR_PHASE].text(),
        truncated=output.truncated,
        duration=round(time.monotonic() - started, 3),
        image=args.image,
    )


HANDLERS: dict[Verb, Handler] = {
    Verb.EXEC: handle_exec,
    Verb.RUN: handle_run,
}
