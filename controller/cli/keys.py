"""``shoal keys``: the controller's signing keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..keys import KeyInfo, KeyStore, SigningKeyError
from .common import JsonOpt, err, out, print_json, usage_error

app = typer.Typer(help="Signing keys: every request is signed with one.", no_args_is_help=True)


def key_json(info: KeyInfo) -> dict[str, object]:
    return {
        "name": info.name,
        "public_key": info.public_key,
        "path": str(info.path),
        "default": info.default,
    }


@app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Name of the key, e.g. your user name or 'ci'.")],
    json_: JsonOpt = False,
) -> None:
    """Create an ed25519 signing key (mode 0600) and print its public key.

    Put the public key in each agent's trust file ('shoal enroll' prints one).
    """
    try:
        info = KeyStore().create(name)
    except SigningKeyError as exc:
        usage_error(exc.message)
    if json_:
        print_json(key_json(info))
        return
    out.print(info.public_key)
    err.say(f"created key {info.name!r} in {info.path}" + (" (default)" if info.default else ""))


@app.command("list")
def list_keys(json_: JsonOpt = False) -> None:
    """List the signing keys, marking the default one."""
    try:
        infos = KeyStore().list()
    except SigningKeyError as exc:
        usage_error(exc.message)
    if json_:
        print_json({"keys": [key_json(i) for i in infos]})
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "DEFAULT", "PUBLIC KEY", "PATH"):
        table.add_column(column, no_wrap=True)
    for info in infos:
        table.add_row(info.name, "*" if info.default else "", info.public_key, str(info.path))
    out.print(table)
    if not infos:
        err.print("no keys yet: create one with 'shoal keys new NAME'")


@app.command("default")
def default(name: Annotated[str, typer.Argument(help="Key to sign with by default.")]) -> None:
    """Choose the key the CLI signs with when --key and SHOAL_KEY are not given."""
    try:
        KeyStore().set_default(name)
    except SigningKeyError as exc:
        usage_error(exc.message)
    err.print(f"default key: {name}")
