"""NATS for the controller: the only controller package that imports nats.

Everything above it sees Shoal's types and errors: :class:`Connection` and
:class:`Subscription` for core NATS, :class:`JetStream` and :class:`Bucket` for
streams and key-value buckets. NATS errors are translated here, into
:class:`ConnectError`, :class:`RegistryUnavailable`, :class:`KeyExists` and
:class:`WrongRevision`.
"""

from .connection import (
    RECONNECT_ATTEMPTS,
    Connection,
    Handler,
    Message,
    NatsClient,
    Subscription,
    connect,
    connect_kwargs,
    flush_in_order,
    jetstream_errors,
    nats_errors,
)
from .jetstream import (
    Bucket,
    BucketSpec,
    JetStream,
    StoredMessage,
    StreamSpec,
    is_transient,
)

__all__ = [
    "RECONNECT_ATTEMPTS",
    "Bucket",
    "BucketSpec",
    "Connection",
    "Handler",
    "JetStream",
    "Message",
    "NatsClient",
    "StoredMessage",
    "StreamSpec",
    "Subscription",
    "connect",
    "connect_kwargs",
    "flush_in_order",
    "is_transient",
    "jetstream_errors",
    "nats_errors",
]
