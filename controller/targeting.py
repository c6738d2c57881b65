"""Resolving a selector to the expected set of hosts before anything is sent."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.protocol import Selector

from .errors import InvalidLimit
from .registry import AgentRecord

_LIMIT_RE = re.compile(r"^\s*(\d+)\s*(%?)\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    """``--limit N`` or ``--limit N%``: a random subset of the matched hosts."""

    value: int
    percent: bool

    @classmethod
    def parse(cls, text: str | int) -> Limit:
        m = _LIMIT_RE.fullmatch(str(text))
        if not m:
            raise InvalidLimit(f"invalid limit {text!r}: use N or N% (e.g. 5 or 10%)")
        value, percent = int(m[1]), bool(m[2])
        if value < 1 or (percent and value > 100):
            raise InvalidLimit(f"invalid limit {text!r}: use 1..N hosts or 1..100%")
        return cls(value, percent)

    def count(self, total: int) -> int:
        if not self.percent:
            return min(self.value, total)
        return min(total, max(1, -(-total * self.value // 100))) if total else 0


@dataclass(frozen=True, slots=True)
class Targets:
    """The expected set: hosts to send to, and matched hosts known to be offline."""

    online: list[str]
    offline: list[str]
    box_keys: dict[str, str] = field(default_factory=dict)
    """Matched hosts' box keys (secrets are sealed to them), for hosts that have one."""

    @property
    def all(self) -> list[str]:
        return sorted([*self.online, *self.offline])


def resolve_targets(
    records: Iterable[AgentRecord],
    selector: Selector,
    limit: Limit | None = None,
    *,
    rng: random.Random | None = None,
) -> Targets:
    """Match records against the selector; ``limit`` samples among online hosts only."""
    matched = [r for r in records if selector.matches(r.host_id, r.facts.selectable())]
    online = sorted(r.host_id for r in matched if r.online)
    offline = sorted(r.host_id for r in matched if not r.online)
    if limit is not None:
        chooser = rng or random.Random()
        online = sorted(chooser.sample(online, limit.count(len(online))))
        offline = []
    keys = {r.host_id: r.facts.box_key for r in matched if r.facts.box_key}
    return Targets(online=online, offline=offline, box_keys=keys)
