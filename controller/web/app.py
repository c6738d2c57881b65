"""The dashboard's server: a Starlette app over a :class:`~shoal.controller.live.FleetView`.

- ``GET /``: the page (plain HTML and JavaScript, no build step).
- ``GET /api/fleet``: hosts, counts, declared services and recent events, as JSON.
- ``GET /api/stream``: the same, pushed as server-sent events when something changes
  (at most twice a second).
- ``GET /api/hosts/{host}``: one host, asked on demand: containers, images, disk.
- ``GET /api/hosts/{host}/logs/{target}``: the last lines of a container's log.
- ``POST /api/hosts/{host}/containers/{target}/restart``: an action, signed with the
  server's key: the agent refuses it unless that key's role allows it.

Read-only unless actions are enabled. Off 127.0.0.1 every request needs the token
(``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` for the page and its stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import operator
import re
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shoal.protocol import (
    CONTAINER_TARGET_PATTERN,
    PsArgs,
    Selector,
    ShoalError,
    utcnow,
    validate_host_id,
)

from ..desired import Convergence, statuses
from ..errors import FleetError
from ..fleet import Fleet
from ..live import FleetView, HostRow, _sort_key, row_of
from ..registry import AgentRecord

log = logging.getLogger("shoal.web")

HISTORY = 60
"""Samples of CPU and memory kept per host for the sparklines."""
PUSH_EVERY = 0.5


@dataclass
class Dashboard:
    """What the app serves from: the fleet, its live view, and the options."""

    fleet: Fleet
    view: FleetView
    token: str | None = None
    actions: bool = False
    history: dict[str, deque[tuple[float, float, int]]] = field(default_factory=dict)
    convergence: list[Convergence] = field(default_factory=list)
    _rows: dict[str, _Row] = field(default_factory=dict)
    """Each host's row and its JSON, kept until its record changes or its state would
    change with time alone."""

    def sample(self, record: AgentRecord) -> None:
        """Keep the host's latest usage sample for its sparkline."""
        usage, at = record.facts.usage, record.facts.usage_at
        if usage is None or at is None:
            return
        points = self.history.setdefault(record.host_id, deque(maxlen=HISTORY))
        stamp = at.timestamp()
        if not points or points[-1][0] != stamp:
            points.append((stamp, usage.cpu_percent, usage.memory_usage))

    def _row(self, record: AgentRecord, now: datetime, offline_after: float | None) -> _Row:
        self.sample(record)  # a sample comes only with a new record
        row = row_of(record, now, offline_after)
        text = _encode(_row_json(row, self.history.get(record.host_id)))
        until = _state_until(record, row.state, offline_after)
        return _Row(record, _by_state(row), row.state, until, text)

    def snapshot_json(self) -> str:
        """Hosts, counts, declared services and events, as the page shows them (JSON).

        With a thousand hosts this runs twice a second per page, so each host's row is
        built and encoded again only when its record changed (or its state changes with
        time), not in every snapshot.
        """
        now = utcnow()
        stamp = now.timestamp()
        offline_after = self.view.fleet.offline_after
        cache = self._rows
        rows = []
        for host, record in self.view.hosts.items():
            cached = cache.get(host)
            if (
                cached is None
                or cached.record is not record
                or (cached.until is not None and stamp > cached.until)
            ):
                cached = cache[host] = self._row(record, now, offline_after)
            rows.append(cached)
        if len(cache) > len(rows):
            for gone in cache.keys() - self.view.hosts.keys():
                del cache[gone]
        rows.sort(key=_ORDER)
        rest = {
            "counts": dict(Counter(map(_STATE, rows))),
            "services": [_convergence_json(c) for c in self.convergence],
            "events": [
                {"at": e.at.isoformat(), "host": e.host_id, "kind": e.kind, "message": e.message}
                for e in reversed(self.view.recent(30))
            ],
            "actions": self.actions,
        }
        tail = _encode(rest)  # '{"counts": ...}'
        return '{"hosts": [' + ", ".join(r.text for r in rows) + "], " + tail[1:]

    def snapshot(self) -> dict[str, Any]:
        """:meth:`snapshot_json`, decoded."""
        document: dict[str, Any] = json.loads(self.snapshot_json())
        return document


@dataclass(frozen=True, slots=True)
class _Row:
    """One host's row as of its record, as JSON, with what sorts and counts it."""

    record: AgentRecord
    order: tuple[object, ...]
    state: str
    until: float | None
    """When (POSIX time) time alone would change the row's state (None: it cannot)."""
    text: str


_by_state = _sort_key("state")
_ORDER = operator.attrgetter("order")
_STATE = operator.attrgetter("state")
_encode = json.JSONEncoder(default=str).encode
"""``json.dumps(..., default=str)``, without making an encoder at each call."""


def _state_until(record: AgentRecord, state: str, offline_after: float | None) -> float | None:
    """When (POSIX time) a row in ``state`` would turn offline with no new heartbeat.

    Of the states :func:`~shoal.controller.live.host_state` gives, only "offline or
    not" depends on the time: :func:`~shoal.controller.registry.is_online` is true
    while ``utcnow() - last_seen`` is at most the limit below, and false from then
    on. An offline row stays offline until a new record replaces it (None).
    """
    if state == "offline":
        return None
    limit = offline_after if offline_after is not None else 3 * record.facts.heartbeat_interval
    return (record.last_seen + timedelta(seconds=limit)).timestamp()


def _row_json(row: HostRow, history: deque[tuple[float, float, int]] | None) -> dict[str, Any]:
    return {
        "host": row.host,
        "state": row.state,
        "arch": row.arch,
        "version": row.version,
        "containers": row.containers,
        "running": row.running,
        "cpu": row.cpu_percent,
        "memory": row.memory,
        "memory_total": row.memory_total,
        "services": row.services,
        "unhealthy": row.unhealthy,
        "last_seen": row.last_seen.isoformat(),
        "labels": row.labels,
        "cpu_history": [p[1] for p in history or ()],
        "memory_history": [p[2] for p in history or ()],
    }


def _convergence_json(c: Convergence) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(c.model_dump_json())
    return document


class TokenGate(BaseHTTPMiddleware):
    """Every request carries the token (when the server has one)."""

    def __init__(self, app: Any, token: str | None) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.token is not None:
            given = request.query_params.get("token") or ""
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "a token is needed (?token=...)"}, status_code=401)
        return await call_next(request)


def _page() -> str:
    return resources.files("shoal.controller.web").joinpath("static/index.html").read_text()


def _error(exc: ShoalError, status: int = 502) -> JSONResponse:
    return JSONResponse({"error": {"code": str(exc.code), "message": exc.message}}, status)


def build_app(dashboard: Dashboard) -> Starlette:
    fleet, view = dashboard.fleet, dashboard.view

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(_page())

    async def api_fleet(request: Request) -> Response:
        return Response(dashboard.snapshot_json(), media_type="application/json")

    async def api_stream(request: Request) -> StreamingResponse:
        async def frames() -> AsyncIterator[str]:
            last = ""
            while True:
                text = dashboard.snapshot_json()
                if text != last:
                    last = text
                    yield f"data: {text}\n\n"
                view.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(15.0):
                        await view.changed.wait()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(PUSH_EVERY)  # the push period: at most twice a second
                yield ": keepalive\n\n"

        return StreamingResponse(
            frames(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _host(request: Request) -> str:
        return validate_host_id(request.path_params["host"])

    async def api_host(request: Request) -> JSONResponse:
        try:
            host = _host(request)
            only = Selector(hosts=(host,))
            ps, images, df = await asyncio.gather(
                fleet.ps(PsArgs(all=True), selector=only),
                fleet.images(selector=only),
                fleet.df(selector=only),
            )
        except ShoalError as exc:
            return _error(exc, 400)
        reply = {
            "host": host,
            "containers": [
                c.model_dump(mode="json") for r in ps.replies.values() for c in r.containers
            ],
            "images": [
                i.model_dump(mode="json") for r in images.replies.values() for i in r.images
            ],
            "disk": [
                {"kind": str(kind), **usage.model_dump(mode="json")}
                for r in df.replies.values()
                for kind, usage in r.usage.items()
            ],
            "errors": {
                name: {
                    h: {"code": str(e.code), "message": e.message} for h, e in result.errors.items()
                }
                for name, result in (("ps", ps), ("images", images), ("df", df))
                if result.errors
            },
            "missing": sorted(set(ps.missing) | set(images.missing) | set(df.missing)),
        }
        return JSONResponse(reply)

    async def api_logs(request: Request) -> JSONResponse:
        target = request.path_params["target"]
        if not re.fullmatch(CONTAINER_TARGET_PATTERN, target):
            return JSONResponse({"error": "invalid container name"}, 400)
        try:
            result = await fleet.logs(target, tail=200, selector=Selector(hosts=(_host(request),)))
        except ShoalError as exc:
            return _error(exc, 400)
        lines = [line.text for r in result.replies.values() for line in r.lines]
        errors = {h: {"code": str(e.code), "message": e.message} for h, e in result.errors.items()}
        return JSONResponse({"lines": lines, "errors": errors})

    async def api_restart(request: Request) -> JSONResponse:
        if not dashboard.actions:
            return JSONResponse(
                {"error": {"code": "read_only", "message": "this dashboard is read-only"}}, 403
            )
        target = request.path_params["target"]
        if not re.fullmatch(CONTAINER_TARGET_PATTERN, target):
            return JSONResponse({"error": "invalid container name"}, 400)
        try:
            result = await fleet.restart_container(
                target, selector=Selector(hosts=(_host(request),))
            )
        except ShoalError as exc:
            return _error(exc, 400)
        if result.errors:
            (host, error), *_ = result.errors.items()
            status = 403 if str(error.code) in ("forbidden", "unauthorized") else 502
            return JSONResponse(
                {"error": {"code": str(error.code), "message": error.message, "host": host}},
                status,
            )
        if result.missing:
            return JSONResponse(
                {"error": {"code": "missing", "message": f"{result.missing[0]} did not answer"}},
                504,
            )
        return JSONResponse({"ok": True, "hosts": sorted(result.replies)})

    routes = [
        Route("/", index),
        Route("/api/fleet", api_fleet),
        Route("/api/stream", api_stream),
        Route("/api/hosts/{host}", api_host),
        Route("/api/hosts/{host}/logs/{target}", api_logs),
        Route("/api/hosts/{host}/containers/{target}/restart", api_restart, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenGate, token=dashboard.token)])


async def refresh_convergence(dashboard: Dashboard) -> None:
    """Every few seconds: where the declared services stand (none without JetStream)."""
    store = dashboard.fleet.desired_store()
    while True:
        try:
            declarations = await store.declarations()
            records = await store.all_records() if declarations else {}
            dashboard.convergence = statuses(
                declarations, list(dashboard.view.hosts.values()), records
            )
            dashboard.view.changed.set()
        except FleetError as exc:
            log.debug("no convergence for the dashboard: %s", exc.message)
        await asyncio.sleep(5.0)  # the refresh period of the services panel


def _quiet_server_class() -> type:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn on the caller's loop, leaving its signal handlers alone."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer


def is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "localhost")


async def serve_dashboard(
    fleet: Fleet,
    address: str,
    port: int,
    *,
    token: str | None = None,
    actions: bool = False,
    started: asyncio.Event | None = None,
) -> None:
    """Serve the dashboard until cancelled (uvicorn on this event loop)."""
    import uvicorn

    _QuietServer = _quiet_server_class()
    if not is_loopback(address) and token is None:
        raise FleetError(
            f"the dashboard on {address} needs a token (--web-token or SHOAL_WEB_TOKEN):"
            " off 127.0.0.1 anyone who reaches it would see the fleet"
        )
    async with FleetView(fleet) as view:
        dashboard = Dashboard(fleet, view, token=token, actions=actions)
        refresher = asyncio.create_task(refresh_convergence(dashboard), name="dashboard-status")
        config = uvicorn.Config(
            build_app(dashboard),
            host=address,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        server = _QuietServer(config)

        async def serve() -> None:
            try:
                await server.serve()
            except SystemExit:  # uvicorn exits when it cannot listen
                raise FleetError(f"the dashboard cannot listen on {address}:{port}") from None

        task = asyncio.create_task(serve(), name="dashboard")
        try:
            while not server.started:
                if task.done():
                    await task
                    raise FleetError(f"the dashboard could not listen on {address}:{port}")
                await asyncio.sleep(0.05)  # uvicorn says it started by a flag only
            if started is not None:
                started.set()
            await task
        finally:
            server.should_exit = True
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
