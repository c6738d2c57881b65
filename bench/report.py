"""Write results into docs/benchmarks.md, keeping the hand-written text around them.

Each generated part sits between ``<!-- bench:KEY:begin -->`` and
``<!-- bench:KEY:end -->``. A run replaces the parts it measured and leaves the
others (and everything outside the markers) as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.common import Table

SECTION_ORDER = (
    "run",
    "machine",
    "fanout",
    "engines",
    "footprint",
    "cli",
    "rollout",
    "converge",
    "dashboard",
)

TEMPLATE = """\
# Benchmarks

Run the suite from the repository root, with the venv that has Shoal installed:

```
python -m bench                     # the whole suite, about 15 minutes on 2 cores; writes this file
python -m bench --quick             # a smoke run: small fleets, few repeats; prints only
python -m bench --only fanout,cli   # a subset: fanout, engines, footprint, cli, rollout,
                                    # converge, dashboard
```

It needs root and dockerd for the real engines, and `nats-server` in the venv
or on the PATH. The tables are written by the suite, between the markers; the
text outside them is not.

{sections}
"""


def _block(key: str, body: str) -> str:
    return f"<!-- bench:{key}:begin -->\n{body.rstrip()}\n<!-- bench:{key}:end -->"


def machine_markdown(machine: dict[str, str]) -> str:
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in machine.items()]
    return "\n".join(lines)


def section_markdown(key: str, tables: list[Table], header: str) -> str:
    parts = [header] if header else []
    parts += [t.markdown() for t in tables]
    return "\n\n".join(parts)


def write(path: Path, sections: dict[str, str]) -> None:
    """Replace the generated parts named in ``sections`` (creating the file if needed)."""
    text = path.read_text() if path.exists() else ""
    if not text:
        text = TEMPLATE.format(sections="\n\n".join(_block(k, "") for k in SECTION_ORDER))
    for key, body in sections.items():
        pattern = re.compile(
            rf"<!-- bench:{re.escape(key)}:begin -->.*?<!-- bench:{re.escape(key)}:end -->",
            re.DOTALL,
        )
        block = _block(key, body)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n")
