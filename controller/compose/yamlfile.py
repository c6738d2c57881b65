"""YAML as Docker Compose reads it: YAML 1.2 scalars, and a key given twice is an error."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .project import ComposeError


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars, as Docker Compose reads files."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class registry)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class LeadingZeroInt(int):
    """An integer written with a leading zero (``0440``): decimal like any other, and
    its text kept, so that a file mode reads it as octal, as Docker Compose does."""

    text: str

    def __new__(cls, text: str) -> LeadingZeroInt:
        value = super().__new__(cls, text, 10)
        value.text = text
        return value


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    assert isinstance(node, yaml.ScalarNode)
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    if re.fullmatch(r"[-+]?0[0-9]+", text):
        return LeadingZeroInt(text)
    return int(text, 10)


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, label: str) -> None:
    """Refuse a key given twice in one mapping (PyYAML would keep the last silently)."""
    seen_nodes: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                    if key_node.value in keys:
                        line = key_node.start_mark.line + 1
                        raise ComposeError(
                            f"{label}: line {line}: key {key_node.value!r} is given twice"
                        )
                    keys.add(key_node.value)
                stack.extend((key_node, value_node))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def load_yaml(text: str, label: str) -> Any:
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, label)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ComposeError(f"{label}: {where}invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{label}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
