"""``.env`` files: the variables next to a compose file (the environment wins)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from .interpolation import Lookup, TemplateError, substitute
from .project import ComposeError

_DOTENV_KEY = re.compile(r"[A-Za-z0-9_.\-\[\]]+")
_DQ_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}


def parse_dotenv(text: str, lookup: Lookup, on_unset: Callable[[str], None]) -> dict[str, str]:
    """Parse a .env / env_file: ``KEY=VALUE`` lines as Compose reads them.

    Blank lines and ``#`` comments are skipped, ``export`` is allowed before a key,
    values may be 'single-quoted' (literal) or "double-quoted" (escapes, may span
    lines); an unquoted value ends at `` #``. Unquoted and double-quoted values are
    interpolated, looking up ``lookup`` first, then keys set earlier in the file. A
    bare ``KEY`` takes its value from ``lookup`` and is left out if that has none.
    Raises ValueError naming the line.
    """
    text = text.removeprefix("\ufeff")
    out: dict[str, str] = {}

    def resolve(name: str) -> str | None:
        found = lookup(name)
        return found if found is not None else out.get(name)

    lines = text.split("\n")
    n = 0
    while n < len(lines):
        lineno, line = n + 1, lines[n].lstrip()
        n += 1
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not _DOTENV_KEY.fullmatch(key):
            raise ValueError(f"line {lineno}: invalid variable name {key!r}")
        if not eq:
            found = lookup(key)
            if found is not None:
                out[key] = found
            continue
        rest = rest.lstrip(" \t")
        try:
            if rest[:1] == "'":
                body, after, n = _quoted(rest, "'", lines, n, lineno)
                value = body
            elif rest[:1] == '"':
                body, after, n = _quoted(rest, '"', lines, n, lineno)
                value = substitute(_unescape(body), resolve, on_unset)
            else:
                value = re.split(r"[ \t]#", rest, maxsplit=1)[0].rstrip()
                after = ""
                value = substitute(value, resolve, on_unset)
        except TemplateError as exc:
            raise ValueError(f"line {lineno}: {exc}") from None
        after = after.strip()
        if after and not after.startswith("#"):
            raise ValueError(f"line {lineno}: unexpected text after the quoted value of {key}")
        out[key] = value
    return out


def _quoted(rest: str, quote: str, lines: list[str], n: int, lineno: int) -> tuple[str, str, int]:
    """The body of a quoted value starting at ``rest`` (which may continue on later lines)."""
    text = rest[1:]
    while True:
        i = 0
        while i < len(text):
            if text[i] == "\\" and quote == '"':
                i += 2
                continue
            if text[i] == quote:
                return text[:i], text[i + 1 :], n
            i += 1
        if n >= len(lines):
            raise ValueError(f"line {lineno}: unterminated {quote}-quoted value")
        text += "\n" + lines[n]
        n += 1


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _DQ_ESCAPES.get(m[1], m[0]), body, flags=re.DOTALL)


def dotenv_environment(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` plus the ``.env`` next to the compose file (``environ`` wins)."""
    env_path = path.absolute().parent / ".env"
    if not env_path.is_file():
        return dict(environ)
    try:
        text = env_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ComposeError(f"{env_path}: cannot read: {exc}") from None
    unset: list[str] = []
    try:
        values = parse_dotenv(text, environ.get, unset.append)
    except ValueError as exc:
        raise ComposeError(f"{env_path}: {exc}") from None
    return {**values, **environ}
