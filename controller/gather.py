"""Scatter-gather: send one request to every expected host, collect the replies.

The wait ends the moment every expected host has answered, or at the deadline;
hosts that did not answer are named, never counted as success.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import Field, TypeAdapter, ValidationError

from protocol import (
    Progress,
    Reply,
    Request,
    Signer,
    StatusResult,
    Subjects,
    Target,
    new_request_id,
)
from protocol.chunks import CHUNK_HEADER, ChunkError, Reassembly
from protocol.signing import canonical_bytes

log = logging.getLogger("shoal.controller")

NO_RESPONDERS = "503"

_INBOX_MESSAGE: TypeAdapter[Progress | Reply] = TypeAdapter(
    Annotated[Progress | Reply, Field(discriminator="kind")]
)

ProgressCallback = Callable[[Progress], None]
ReplyCallback = Callable[[Reply], None]


@dataclass(slots=True)
class Gathered:
    request_id: str
    replies: dict[str, Reply] = field(default_factory=dict)
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
    nc: NATS,
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
) -> Gathered:
    """Send ``verb`` directly to each host and wait for one final reply per host.

    A host that keeps sending progress keeps its request alive: its deadline
    moves to ``timeout`` seconds after its latest progress message. Hosts still
    silent at the end are asked (``status``) what became of the request, so a
    slow host, a lost reply and a dead host are told apart.
    """
    expected = set(hosts)
    request_id = new_request_id()
    result = Gathered(request_id=request_id)
    started = time.monotonic()
    if not expected:
        return result
    all_in = asyncio.Event()
    deadlines: dict[str, float] = {h: started + timeout for h in expected}
    waiting = set(expected)
    chunks: dict[str, Reassembly] = {}

    async def on_msg(msg: Msg) -> None:
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
        try:
            message = _INBOX_MESSAGE.validate_json(data)
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
        except ValidationError as exc:
            host = sent_to
            if host in waiting:
                waiting.discard(host)
                result.malformed[host] = f"malformed reply: {exc.error_count()} error(s)"
                if not waiting:
                    all_in.set()
            else:
                log.warning("ignoring malformed message on the reply inbox")
            return
        if reply.host not in waiting or reply.id != request_id:
            return  # late, duplicate, or not ours
        if reply.host != sent_to:
            log.warning("ignoring a reply for %s sent on %s's subject", reply.host, sent_to)
            return
        waiting.discard(reply.host)
        result.replies[reply.host] = reply
        if on_reply is not None:
            on_reply(reply)
        if not waiting:
            all_in.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.*", cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
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
        with contextlib.suppress(nats.errors.Error):  # the connection may be gone by now
            await sub.unsubscribe()
    if waiting and follow_up and nc.is_connected:
        await _ask_status(nc, subjects, result, waiting, timeout, sender, signer)
    result.missing = sorted([*waiting, *result.no_responders])
    result.duration = time.monotonic() - started
    return result


STATUS_WAIT = 3.0


async def _ask_status(
    nc: NATS,
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
    )
    for host, reply in asked.replies.items():
        if not reply.ok or reply.result is None:
            continue
        try:
            status = StatusResult.model_validate(reply.result)
        except ValidationError:
            continue
        if status.request_id == result.request_id:
            result.status[host] = status


def encode_request(
    template: dict[str, Any], target: dict[str, Any], signer: Signer | None
) -> bytes:
    """The wire bytes of a request for one target, signed when a signer is given."""
    return RequestEncoder(template, signer).encode(target)


class RequestEncoder:
    """Wire bytes of one request for many targets, serialising the common part once.

    The wire form is the canonical form (keys sorted, compact) with ``sig`` added at
    the end, so the signed bytes are a prefix of what is sent.
    """

    _MARK = "\x00target\x00"

    def __init__(self, template: dict[str, Any], signer: Signer | None) -> None:
        self.signer = signer
        canonical = canonical_bytes({**template, "target": self._MARK}).decode()
        # rpartition: only ttl, v and verb sort after "target", and they hold no free text.
        head, _, tail = canonical.rpartition(json.dumps(self._MARK))
        self._head, self._tail = head.encode(), tail.encode()

    def encode(self, target: dict[str, Any]) -> bytes:
        body = (
            self._head
            + json.dumps(target, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            + self._tail
        )
        if self.signer is None:
            return body
        sig = json.dumps(self.signer.signature(body), separators=(",", ":")).encode()
        return body[:-1] + b',"sig":' + sig + b"}"
