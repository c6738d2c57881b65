"""One operation per service at a time on a host, whichever verb asks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shoal.protocol import Conflict


class ServiceLocks:
    """Which request holds which service of this host."""

    def __init__(self) -> None:
        self._busy: dict[str, str] = {}

    @contextmanager
    def claim(self, service: str, request_id: str) -> Iterator[None]:
        """Hold ``service`` for one request; Conflict, naming the holder, while another holds it."""
        holder = self._busy.get(service)
        if holder is not None:
            raise Conflict(
                f"service {service!r} is busy with request {holder} on this host; "
                "one operation per service at a time",
                detail={"request_id": holder},
            )
        self._busy[service] = request_id
        try:
            yield
        finally:
            self._busy.pop(service, None)
