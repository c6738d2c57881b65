"""Service order for a deploy: dependencies first, otherwise the file's order."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

Fail = Callable[[str, str], NoReturn]


def order_services(depends: Mapping[str, Sequence[str]], fail: Fail) -> list[str]:
    """Dependencies first; otherwise the file's order. An unknown service or a cycle fails."""
    index = {name: i for i, name in enumerate(depends)}
    for name, deps in depends.items():
        for dep in deps:
            if dep not in depends:
                fail(
                    f"services.{name}.depends_on",
                    f"unknown service {dep!r} (services: {', '.join(depends)})",
                )
    waiting = {name: len(deps) for name, deps in depends.items()}
    dependents: dict[str, list[str]] = {name: [] for name in depends}
    for name, deps in depends.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = [(index[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (index[dependent], dependent))
    if len(order) < len(depends):
        fail("services", f"depends_on cycle: {' -> '.join(find_cycle(depends, order))}")
    return order


def find_cycle(depends: Mapping[str, Sequence[str]], done: list[str]) -> list[str]:
    """One cycle among the services :func:`order_services` could not place."""
    placed = set(done)
    left = [n for n in depends if n not in placed]
    path = [left[0]]
    while True:
        nxt = next(d for d in depends[path[-1]] if d not in placed)
        if nxt in path:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
