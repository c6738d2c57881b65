"""NatsOptions turns into nats.connect arguments without reading any file."""

from __future__ import annotations

import ssl
from pathlib import Path

from shoal.protocol.connection import NatsOptions


def test_nats_kwargs_reads_no_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    options = NatsOptions(
        servers=("nats://a:4222",), nkey=missing, tlsca=missing, tlscert=missing, tlskey=missing
    )
    kwargs = options.nats_kwargs()
    assert kwargs == {"servers": ["nats://a:4222"], "name": "shoal", "nkeys_seed": str(missing)}


def test_nats_kwargs_passes_the_callers_tls_context() -> None:
    context = ssl.create_default_context()
    kwargs = NatsOptions(token="t").nats_kwargs(context)
    assert kwargs["tls"] is context
    assert kwargs["token"] == "t"


def test_connect_kwargs_matches_nats_kwargs_without_tls() -> None:
    options = NatsOptions(user="u", password="p")
    assert options.connect_kwargs() == options.nats_kwargs()
