"""Chunking of large replies (protocol/chunks.py)."""

from __future__ import annotations

import random

import pytest

from shoal.protocol.chunks import CHUNK_HEADER, DIGEST_HEADER, ChunkError, Reassembly, split_reply


def test_chunks_reassemble_in_any_order() -> None:
    data = bytes(random.Random(1).randrange(256) for _ in range(100_000))
    parts = list(split_reply(data, 4096))
    assert len(parts) > 20 and all(len(p) <= 4096 for _, p in parts)
    random.Random(2).shuffle(parts)
    assembly = Reassembly()
    results = [assembly.add(h, p) for h, p in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == data


def test_a_corrupted_chunk_fails_the_digest() -> None:
    parts = list(split_reply(b"x" * 10_000, 2048))
    headers, payload = parts[1]
    parts[1] = (headers, b"y" + payload[1:])
    assembly = Reassembly()
    with pytest.raises(ChunkError, match="digest"):
        for h, p in parts:
            assembly.add(h, p)


@pytest.mark.parametrize(
    "headers",
    [
        {CHUNK_HEADER: "nonsense"},
        {CHUNK_HEADER: "5/3", DIGEST_HEADER: "sha256:0"},
        {CHUNK_HEADER: "0/999999", DIGEST_HEADER: "sha256:0"},
        {CHUNK_HEADER: "-1/3", DIGEST_HEADER: "sha256:0"},
        {},
    ],
)
def test_malformed_chunk_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ChunkError):
        Reassembly().add(headers, b"data")


def test_chunks_of_two_replies_do_not_mix() -> None:
    first = list(split_reply(b"a" * 5000, 2048))
    second = list(split_reply(b"b" * 5000, 2048))
    assembly = Reassembly()
    assembly.add(*first[0])
    with pytest.raises(ChunkError, match="mixed"):
        assembly.add(*second[1])
