"""Scatter-gather: send one request to every expected host, collect the replies.

The wait ends the moment every expected host has answered, or at the deadline;
hosts that did not answer are named, never counted as success.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model

from shoal.protocol import (
    Progress,
    Reply,
    Request,
    Signer,
    StatusResult,
    Subjects,
    Target,
    new_request_id,
)
from shoal.protocol.chunks import CHUNK_HEADER, ChunkError, Reassembly
from shoal.protocol.signing import canonical_bytes

from .transport import Connection, Message

log = logging.getLogger("shoal.controller")

NO_RESPONDERS = "503"

_INBOX_MESSAGE: TypeAdapter[Progress | Reply] = TypeAdapter(
    Annotated[Progress | Reply, Field(discriminator="kind")]
)

ProgressCallback = Callable[[Progress], None]
ReplyCallback = Callable[[Reply], None]


@functools.cache
def _typed_inbox(model: type[BaseModel]) -> TypeAdapter[Progress | Reply]:
    """The inbox's messages with a reply's ``result`` validated as ``model`` in the same
    pass as the envelope: one validation per reply, straight from the JSON bytes."""
    result_type: Any = model | None
    typed = create_model(f"{model.__name__}Reply", __base__=Reply, result=(result_type, None))
    return TypeAdapter(Annotated[Progress | typed, Field(discriminator="kind")])


def _envelope(reply: Reply, result: dict[str, Any] | None) -> Reply:
    """A plain :class:`Reply` with the envelope of ``reply`` and the given result."""
    return Reply.model_construct(
        reply.model_fields_set,
        v=reply.v,
        kind=reply.kind,
        id=reply.id,
        host=reply.host,
        ok=reply.ok,
        result=result,
        error=reply.error,
        started_at=reply.started_at,
        duration=reply.duration,
    )


def invalid_result_message(exc: ValidationError) -> str:
    return f"the host's result is malformed ({exc.error_count()} errors)"


_gc_lock = threading.Lock()
_gc_holds = 0
_gc_thresholds = gc.get_threshold()
_gc_froze = False
RELAXED_GC_THRESHOLD = 100_000
"""Allocations between two young-generation collections while a bulk read runs."""


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector out of the way while thousands of replies or
    heartbeats arrive.

    Each one leaves dozens of tracked objects behind (models, dicts, lists). At the
    default thresholds that sets off hundreds of young collections and several full ones
    per 10,000 hosts, each full one walking the whole heap (every module, schema and
    model the process holds): about half the controller's CPU. While held, objects that
    existed before are frozen out of the collector's sight (``gc.freeze``) and young
    collections run every ``RELAXED_GC_THRESHOLD`` allocations instead of 700.
    Reference counting frees everything else as usual and the collector keeps running,
    so a long request (``logs -f``) stays bounded. Nested and concurrent holds share one;
    the last one out restores the thresholds found by the first and unfreezes (unless
    the application had frozen objects itself, which is left alone).
    """
    global _gc_holds, _gc_thresholds, _gc_froze
    with _gc_lock:
        if _gc_holds == 0:
            _gc_thresholds = gc.get_threshold()
            if 0 < _gc_thresholds[0] < RELAXED_GC_THRESHOLD:
                gc.set_threshold(RELAXED_GC_THRESHOLD, *_gc_thresholds[1:])
            _gc_froze = gc.isenabled() and gc.get_freeze_count() == 0
            if _gc_froze:
                gc.freeze()
        _gc_holds += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holds -= 1
            if _gc_holds == 0:
                gc.set_threshold(*_gc_thresholds)
                if _gc_froze:
                    gc.unfreeze()
                    _gc_froze = False


@dataclass(slots=True)
class Gathered:
    request_id: str
    replies: dict[str, Reply] = field(default_factory=dict)
    """Every valid final reply, ok or not. With a ``result_model``, the result of an ok
    reply is in ``results`` instead (``result`` is None here), or, when it is not a valid
    result, named in ``invalid_results`` (and kept here as sent)."""
    results: dict[str, BaseModel] = field(default_factory=dict)
    """With a ``result_model``: the result of each ok reply, validated with the envelope."""
    invalid_results: dict[str, str] = field(default_factory=dict)
    """With a ``result_model``: ok replies whose result is not one (why, for the error)."""
    malformed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """Hosts that never answered, including ``no_responders``."""
    no_responders: list[str] = field(default_factory=list)
    """Hosts whose subject had no subscriber when the request was sent."""
    last_progress: dict[str, Progress] = field(default_factory=dict)
    status: dict[str, StatusResult] = field(default_factory=dict)
    """For silent hosts that answered a follow-up ``status``: what became of the request."""
    duration: float = 0.0


async def gather_replies(
    nc: Connection,
    subjects: Subjects,
    verb: str,
    args: dict[str, Any],
    hosts: Iterable[str],
    *,
    timeout: float,
    sender: str = "",
    ttl: float | None = None,
    on_progress: ProgressCallback | None = None,
    on_reply: ReplyCallback | None = None,
    signer: Signer | None = None,
    follow_up: bool = True,
    result_model: type[BaseModel] | None = None,
) -> Gathered:
    """Send ``verb`` directly to each host and wait for one final reply per host.

    A host that keeps sending progress keeps its request alive: its deadline
    moves to ``timeout`` seconds after its latest progress message. Hosts still
    silent at the end are asked (``status``) what became of the request, so a
    slow host, a lost reply and a dead host are told apart.

    With ``result_model`` each reply is validated once, envelope and result together,
    into ``Gathered.results``; an ok reply whose result does not fit is kept in
    ``Gathered.invalid_results``, never dropped.
    """
    expected = set(hosts)
    inbox_adapter = _INBOX_MESSAGE if result_model is None else _typed_inbox(result_model)
    request_id = new_request_id()
    result = Gathered(request_id=request_id)
    started = time.monotonic()
    if not expected:
        return result
    all_in = asyncio.Event()
    deadlines: dict[str, float] = {h: started + timeout for h in expected}
    waiting = set(expected)
    chunks: dict[str, Reassembly] = {}

    async def on_msg(msg: Message) -> None:
        # Each host answers on its own reply subject; a message about another host is forged.
        sent_to = msg.subject.rsplit(".", 1)[-1]
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            # The server says nothing listens on that host's subject: it will not answer.
            if sent_to in waiting:
                waiting.discard(sent_to)
                result.no_responders.append(sent_to)
                if not waiting:
                    all_in.set()
            return
        data = msg.data
        if msg.headers and CHUNK_HEADER in msg.headers:
            if sent_to not in waiting:
                return
            assembly = chunks.setdefault(sent_to, Reassembly())
            try:
                joined = assembly.add(msg.headers, msg.data)
            except ChunkError as exc:
                waiting.discard(sent_to)
                chunks.pop(sent_to, None)
                result.malformed[sent_to] = f"malformed chunked reply: {exc}"
                if not waiting:
                    all_in.set()
                return
            if joined is None:
                deadlines[sent_to] = time.monotonic() + timeout  # still arriving
                return
            chunks.pop(sent_to, None)
            data = joined
        message: Progress | Reply | None = None
        invalid: ValidationError | None = None
        typed: BaseModel | None = None  # the result of an ok reply, as ``result_model``
        bad_result: str | None = None  # why the result of an ok reply is not one
        try:
            message = inbox_adapter.validate_json(data)
            if result_model is not None and isinstance(message, Reply) and message.ok:
                typed = getattr(message, "result", None)  # validated with the envelope
        except ValidationError as exc:
            invalid = exc
        if message is None and result_model is not None:
            # Slow path, for invalid messages only: is it the envelope, or only the result?
            try:
                message = _INBOX_MESSAGE.validate_json(data)
            except ValidationError as exc:
                invalid = exc
            else:
                if isinstance(message, Reply) and message.ok and message.result is not None:
                    try:
                        typed = result_model.model_validate(message.result)
                    except ValidationError as exc:
                        bad_result = invalid_result_message(exc)
        if message is None:
            host = sent_to
            if host in waiting:
                waiting.discard(host)
                errors = invalid.error_count() if invalid is not None else 1
                result.malformed[host] = f"malformed reply: {errors} error(s)"
                if not waiting:
                    all_in.set()
            else:
                log.warning("ignoring malformed message on the reply inbox")
            return
        if isinstance(message, Progress):
            progress = message
            if progress.id != request_id or progress.host not in waiting:
                return
            if progress.host != sent_to:
                log.warning("ignoring progress for %s sent by %s", progress.host, sent_to)
                return
            deadlines[progress.host] = time.monotonic() + timeout
            result.last_progress[progress.host] = progress
            if on_progress is not None:
                on_progress(progress)
            return
        reply = message
        if reply.host not in waiting or reply.id != request_id:
            return  # late, duplicate, or not ours
        if reply.host != sent_to:
            log.warning("ignoring a reply for %s sent on %s's subject", reply.host, sent_to)
            return
        waiting.discard(reply.host)
        if result_model is not None and reply.ok:
            if typed is None and bad_result is None:  # an ok reply without a result
                try:
                    typed = result_model.model_validate({})
                except ValidationError as exc:
                    bad_result = invalid_result_message(exc)
            if typed is not None:
                result.results[reply.host] = typed
                reply = _envelope(reply, None)
                if on_reply is not None:
                    on_reply(_envelope(reply, typed.model_dump(mode="json")))
            else:
                assert bad_result is not None
                result.invalid_results[reply.host] = bad_result
                if on_reply is not None:
                    on_reply(reply)
        elif on_reply is not None:
            on_reply(reply)
        result.replies[reply.host] = reply
        if not waiting:
            all_in.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*", on_msg)
    try:
        template = Request(
            id=request_id,
            verb=verb,
            args=args,
            sender=sender,
            target=Target(host="placeholder"),
            **({"ttl": ttl} if ttl is not None else {}),
        ).model_dump(mode="json", exclude={"sig"})
        encoder = RequestEncoder(template, signer)
        for host in sorted(expected):
            await nc.publish(
                subjects.host(host, verb),
                encoder.encode({"host": host}),
                reply=f"{inbox}.{host}",
            )
        await nc.flush(timeout=max(1, int(timeout)))
        while waiting:
            now = time.monotonic()
            next_deadline = max(deadlines[h] for h in waiting)
            if now >= next_deadline:
                break
            try:
                await asyncio.wait_for(all_in.wait(), timeout=next_deadline - now)
            except TimeoutError:
                continue
    finally:
        await sub.unsubscribe()
    if waiting and follow_up and nc.is_connected:
        await _ask_status(nc, subjects, result, waiting, timeout, sender, signer)
    result.missing = sorted([*waiting, *result.no_responders])
    result.duration = time.monotonic() - started
    return result


STATUS_WAIT = 3.0


async def _ask_status(
    nc: Connection,
    subjects: Subjects,
    result: Gathered,
    silent: set[str],
    timeout: float,
    sender: str,
    signer: Signer | None,
) -> None:
    """Ask silent hosts about the request: still running, finished, or never seen."""
    asked = await gather_replies(
        nc,
        subjects,
        "status",
        {"request_id": result.request_id},
        sorted(silent),
        timeout=min(timeout, STATUS_WAIT),
        sender=sender,
        signer=signer,
        follow_up=False,
        result_model=StatusResult,
    )
    for host, status in asked.results.items():
        if isinstance(status, StatusResult) and status.request_id == result.request_id:
            result.status[host] = status


def encode_request(
    template: dict[str, Any], target: dict[str, Any], signer: Signer | None
) -> bytes:
    """The wire bytes of a request for one target, signed when a signer is given."""
    return RequestEncoder(template, signer).encode(target)


class RequestEncoder:
    """Wire bytes of one request for many targets, serialising the common part once.

    The wire form is the canonical form (keys sorted, compact) with ``sig`` added at
    the end, so the signed bytes are a prefix of what is sent. Per target, only the
    target is serialised and, when signing, the signature computed: the ``sig``
    member around its value is the same for every target.
    """

    _MARK = "\x00target\x00"
    # The canonical form's encoder (protocol.signing.canonical_bytes), made once.
    _dumps = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode

    def __init__(self, template: dict[str, Any], signer: Signer | None) -> None:
        self.signer = signer
        canonical = canonical_bytes({**template, "target": self._MARK}).decode()
        # rpartition: only ttl, v and verb sort after "target", and they hold no free text.
        head, _, tail = canonical.rpartition(json.dumps(self._MARK))
        self._head, self._tail = head.encode(), tail.encode()
        self._sig_head = self._sig_tail = b""
        if signer is not None:
            # ',"sig":{"alg":…,"key":…,"value":"' + value + '"}}', as json.dumps writes
            # the signature member; the value is base64url and needs no escaping.
            member = json.dumps(signer.signature(b""), separators=(",", ":"))
            head, _, _ = member.rpartition('"value":')
            self._sig_head = b',"sig":' + head.encode() + b'"value":"'
            self._sig_tail = b'"}}'

    def encode(self, target: dict[str, Any]) -> bytes:
        body = self._head + self._dumps(target).encode() + self._tail
        if self.signer is None:
            return body
        return body[:-1] + self._sig_head + self.signer.sign(body).encode() + self._sig_tail
