"""Replies larger than the server's max payload travel as chunks.

Each chunk is a NATS message on the reply subject whose payload is a slice of
the reply's JSON bytes, with headers ``Shoal-Chunk: INDEX/COUNT`` (from 0) and
``Shoal-Digest: sha256:HEX`` of the whole reply. The receiver joins the slices
in order and checks the digest before parsing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from .errors import ErrorCode, ShoalError

CHUNK_HEADER = "Shoal-Chunk"
DIGEST_HEADER = "Shoal-Digest"
HEADER_ROOM = 512
"""Bytes kept free in each message for the subject and headers."""
MAX_REPLY_BYTES = 64 * 1024 * 1024
"""Largest reply an agent sends at all; beyond it, a ``payload_too_large`` error."""
MAX_CHUNKS = 4096


def digest(data: bytes) -> str:
    """The ``Shoal-Digest`` value of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def split_reply(data: bytes, max_payload: int) -> Iterator[tuple[dict[str, str], bytes]]:
    """Headers and payload of each chunk of ``data``."""
    size = max(1024, max_payload - HEADER_ROOM)
    count = -(-len(data) // size)
    whole = digest(data)
    for index in range(count):
        part = data[index * size : (index + 1) * size]
        yield {CHUNK_HEADER: f"{index}/{count}", DIGEST_HEADER: whole}, part


class ChunkError(ShoalError, ValueError):
    """Chunks that cannot form a reply."""

    code = ErrorCode.INVALID_REPLY


class Reassembly:
    """Collects the chunks of one reply, in any order."""

    def __init__(self) -> None:
        self.parts: dict[int, bytes] = {}
        self.count: int | None = None
        self.digest: str | None = None

    def add(self, headers: dict[str, str], payload: bytes) -> bytes | None:
        """Add a chunk; the whole reply once the last one arrived, checked."""
        try:
            index_text, count_text = headers[CHUNK_HEADER].split("/", 1)
            index, count = int(index_text), int(count_text)
        except (KeyError, ValueError) as exc:
            raise ChunkError("malformed chunk header") from exc
        if not 0 <= index < count <= MAX_CHUNKS:
            raise ChunkError(f"chunk {index}/{count} out of range")
        if self.count is None:
            self.count, self.digest = count, headers.get(DIGEST_HEADER, "")
        elif count != self.count or headers.get(DIGEST_HEADER, "") != self.digest:
            raise ChunkError("chunks of different replies mixed")
        self.parts[index] = payload
        if len(self.parts) < count:
            return None
        data = b"".join(self.parts[i] for i in range(count))
        if digest(data) != self.digest:
            raise ChunkError("reassembled reply fails its digest")
        return data
