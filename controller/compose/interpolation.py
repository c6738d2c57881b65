"""Variable interpolation in string values, as Compose does (``$VAR``, ``${VAR:-default}``, …)."""

from __future__ import annotations

import re
from collections.abc import Callable

from shoal.protocol.errors import ErrorCode, ShoalError


class TemplateError(ShoalError, ValueError):
    """A ``$`` expression in a compose value that cannot be interpolated."""

    code = ErrorCode.BAD_REQUEST


_VAR_NAME = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")

Lookup = Callable[[str], str | None]


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def substitute(text: str, lookup: Lookup, on_unset: Callable[[str], None]) -> str:
    """Compose's interpolation: $VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:?e}, ${VAR?e},
    ${VAR:+a}, ${VAR+a}, and $$ for a literal $. Defaults nest (``${A:-${B}}``)."""
    if "$" not in text:
        return text

    def invalid() -> TemplateError:
        return TemplateError(f"invalid interpolation in {text!r} (write $$ for a literal $)")

    out: list[str] = []
    i = 0
    while i < len(text):
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        nxt = text[j + 1 : j + 2]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing_brace(text, j + 2)
            if end < 0:
                raise invalid()
            out.append(_braced(text[j + 2 : end], lookup, on_unset, invalid))
            i = end + 1
        else:
            match = _VAR_NAME.match(text, j + 1)
            if match is None:
                raise invalid()
            value = lookup(match.group())
            if value is None:
                on_unset(match.group())
                value = ""
            out.append(value)
            i = match.end()
    return "".join(out)


def _braced(
    inner: str,
    lookup: Lookup,
    on_unset: Callable[[str], None],
    invalid: Callable[[], TemplateError],
) -> str:
    match = _VAR_NAME.match(inner)
    if match is None:
        raise invalid()
    name, rest = match.group(), inner[match.end() :]
    value = lookup(name)
    if not rest:
        if value is None:
            on_unset(name)
            return ""
        return value
    colon = rest.startswith(":")
    if colon:
        rest = rest[1:]
    op, word = rest[:1], rest[1:]
    if op not in ("-", "+", "?"):
        raise invalid()
    present = value is not None and (value != "" or not colon)
    if op == "-":
        return value if present and value is not None else substitute(word, lookup, on_unset)
    if op == "+":
        return substitute(word, lookup, on_unset) if present else ""
    if present and value is not None:
        return value
    message = substitute(word, lookup, on_unset)
    raise TemplateError(
        f"required variable {name} is missing a value" + (f": {message}" if message else "")
    )
