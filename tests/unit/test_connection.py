"""NatsOptions turns into nats.connect arguments without reading any file; the agent's and
the controller's connection modules load the TLS files, with a clear error when they cannot."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from shoal.agent.connection import connect_kwargs as agent_connect_kwargs
from shoal.agent.errors import AgentStartError
from shoal.controller.errors import ConnectError
from shoal.controller.transport import connect_kwargs
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
    assert connect_kwargs(options) == options.nats_kwargs()
    assert agent_connect_kwargs(options) == options.nats_kwargs()


def test_connect_kwargs_loads_the_ca_file() -> None:
    ca = Path(ssl.get_default_verify_paths().openssl_cafile)
    if not ca.is_file():  # Debian's bundle: the system CA certificates
        ca = Path("/etc/ssl/certs/ca-certificates.crt")
    kwargs = connect_kwargs(NatsOptions(tlsca=ca))
    assert isinstance(kwargs["tls"], ssl.SSLContext)
    assert kwargs["tls"].cert_store_stats()["x509_ca"] > 0


def test_unreadable_tls_files_are_a_clear_error_on_either_side(tmp_path: Path) -> None:
    options = NatsOptions(tlsca=tmp_path / "missing-ca.pem")
    with pytest.raises(ConnectError, match="cannot load the TLS files"):
        connect_kwargs(options)
    with pytest.raises(AgentStartError, match="cannot load the TLS files"):
        agent_connect_kwargs(options)
