"""Targeting: host globs and Kubernetes-style label selectors.

Semantics (shared by controller and agent):

* repeated host globs (``-H``) widen the match: a host matches if any glob does;
* repeated label selectors (``-l``) narrow it: every selector must hold;
* globs and labels together must both hold;
* facts such as ``arch``, ``variant`` and ``os`` are selectable like labels.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import InvalidSelector

_GLOB_RE = re.compile(r"^[A-Za-z0-9_\-*?\[\]!]{1,128}$")
_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?"
_VALUE = r"[A-Za-z0-9._-]{0,63}"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")
_EXISTS_RE = re.compile(rf"^(?P<key>{_KEY})$")
_NOT_EXISTS_RE = re.compile(rf"^!\s*(?P<key>{_KEY})$")
_EQ_RE = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_SET_RE = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
MAX_SELECTOR_LENGTH = 1024


def is_label_key(key: str) -> bool:
    """True if ``key`` is a valid label key (also usable in selectors)."""
    return bool(_KEY_RE.fullmatch(key))


def is_label_value(value: str) -> bool:
    """True if ``value`` is a valid label value (also usable in selectors)."""
    return bool(_VALUE_RE.fullmatch(value))


class Op(StrEnum):
    EQ = "="
    NE = "!="
    EXISTS = "exists"
    NOT_EXISTS = "!exists"
    IN = "in"
    NOT_IN = "notin"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One clause of a label selector."""

    key: str
    op: Op
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.op:
            case Op.EXISTS:
                return present
            case Op.NOT_EXISTS:
                return not present
            case Op.EQ:
                return present and value == self.values[0]
            case Op.NE:
                return not present or value != self.values[0]
            case Op.IN:
                return present and value in self.values
            case Op.NOT_IN:
                return not present or value not in self.values
        raise AssertionError(self.op)  # pragma: no cover


def _split_clauses(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    clauses: list[str] = []
    depth = 0
    current: list[str] = []
    for pos, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth > 1:
                raise InvalidSelector(f"nested '(' at position {pos} in selector {text!r}")
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidSelector(f"unbalanced ')' at position {pos} in selector {text!r}")
        if char == "," and depth == 0:
            clauses.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise InvalidSelector(f"unbalanced '(' in selector {text!r}")
    clauses.append("".join(current).strip())
    return clauses


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """Parse ``role=web,arch in (arm64,arm),!canary`` into requirements.

    Raises :class:`InvalidSelector` with a message that names the bad clause.
    """
    if not isinstance(text, str):
        raise InvalidSelector("a label selector must be a string")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise InvalidSelector(f"label selector longer than {MAX_SELECTOR_LENGTH} characters")
    if not text.strip():
        raise InvalidSelector("empty label selector")
    requirements: list[Requirement] = []
    for clause in _split_clauses(text):
        if not clause:
            raise InvalidSelector(f"empty clause in selector {text!r}")
        requirements.append(_parse_clause(clause, text))
    return tuple(requirements)


def _parse_clause(clause: str, whole: str) -> Requirement:
    if m := _SET_RE.match(clause):
        raw_values = [v.strip() for v in m["values"].split(",")]
        if raw_values == [""]:
            raise InvalidSelector(f"empty value list in {clause!r}")
        for v in raw_values:
            if not v or not _VALUE_RE.fullmatch(v):
                raise InvalidSelector(f"invalid value {v!r} in {clause!r}")
        op = Op.IN if m["op"] == "in" else Op.NOT_IN
        return Requirement(m["key"], op, tuple(raw_values))
    if m := _EQ_RE.match(clause):
        op = Op.NE if m["op"] == "!=" else Op.EQ
        return Requirement(m["key"], op, (m["value"],))
    if m := _NOT_EXISTS_RE.match(clause):
        return Requirement(m["key"], Op.NOT_EXISTS)
    if m := _EXISTS_RE.match(clause):
        return Requirement(m["key"], Op.EXISTS)
    raise InvalidSelector(
        f"cannot parse {clause!r} in selector {whole!r}: expected k=v, k!=v, k, !k, "
        "k in (a,b) or k notin (a,b)"
    )


def validate_host_glob(glob: str) -> str:
    """Return ``glob`` if it only uses host-id characters and glob wildcards."""
    if not isinstance(glob, str) or not _GLOB_RE.fullmatch(glob):
        raise InvalidSelector(
            f"invalid host glob {glob!r}: use host-id characters (A-Z a-z 0-9 _ -) "
            "and the wildcards * ? [...]"
        )
    return glob


class Selector(BaseModel):
    """Which hosts a request is for. Empty means every host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hosts: tuple[str, ...] = Field(
        default=(), description="Host globs; a host matches if any glob matches (OR)."
    )
    labels: tuple[str, ...] = Field(
        default=(),
        description="Label selectors; every selector must match (AND). "
        "Facts such as arch, variant and os are selectable like labels.",
    )

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for glob in value:
            validate_host_glob(glob)
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            parse_label_selector(text)
        return value

    @classmethod
    def build(cls, hosts: Iterable[str] = (), labels: Iterable[str] = ()) -> Selector:
        """Build a selector, raising :class:`InvalidSelector` on bad input.

        ``hosts`` and ``labels`` are collections of strings; a bare string is refused
        (it would be read as one glob per character, and ``*`` would match every host).
        """
        if isinstance(hosts, str) or isinstance(labels, str):
            raise TypeError("Selector.build takes sequences of strings, not a single string")
        hosts, labels = tuple(hosts), tuple(labels)  # iterate generators only once
        for glob in hosts:
            validate_host_glob(glob)
        for text in labels:
            parse_label_selector(text)
        return cls(hosts=hosts, labels=labels)

    @property
    def is_everything(self) -> bool:
        return not self.hosts and not self.labels

    def requirements(self) -> tuple[Requirement, ...]:
        return tuple(req for text in self.labels for req in parse_label_selector(text))

    def matches(self, host_id: str, labels: Mapping[str, str]) -> bool:
        """True if the host with this id and these labels (facts included) is selected."""
        if self.hosts and not any(fnmatch.fnmatchcase(host_id, g) for g in self.hosts):
            return False
        return all(req.matches(labels) for req in self.requirements())
