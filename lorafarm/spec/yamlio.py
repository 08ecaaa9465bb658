"""Reading a YAML document the user wrote (a job spec, the tenants file): UTF-8 text, valid
YAML, one mapping, no key written twice — each problem one line naming the file and the fix.

PyYAML silently keeps the last of two equal keys (two ``tenant:`` lines): :class:`UniqueKeyLoader`
records every such pair with both lines instead, and :func:`parse_mapping` refuses them all at
once. Importable without torch or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from .errors import yaml_position

_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that records every mapping key written twice in one mapping (merge
    keys ``<<:`` may still be overridden: that is what they are for)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int, int]] = []  # (key, first line, second line)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        self.duplicates.append((key, seen[key], line))
                    else:
                        seen[key] = line
                except TypeError:  # an unhashable key: construct_mapping itself refuses it
                    continue
        return super().construct_mapping(node, deep=deep)


MAX_BYTES = 8 * 1024 * 1024  # a spec or tenants file is a few KB; anything this big is the wrong file


def read_text(source: str | Path, what: str, error: type[SpecError] = SpecError) -> str:
    """The UTF-8 text of file ``source``; ``what`` ("spec file", "tenants file") names it in
    the one-line ``error`` for a missing, unreadable, huge or non-UTF-8 file."""
    path = Path(source)
    try:
        if path.is_dir():
            raise error([f"{source}: is a directory, not a {what} — give the YAML file's path"])
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error([f"{source}: cannot read the {what} (no such file) — check the path"]) from None
    except OSError as e:
        raise error([f"{source}: cannot read the {what} ({e.strerror}) — check the path and permissions"]) from None
    if len(data) > MAX_BYTES:
        raise error([f"{source}: larger than {MAX_BYTES // (1024 * 1024)} MiB, too big for a {what} — "
                     "check that this is the right file"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error([f"{source}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}) — "
                     "save it as UTF-8"]) from None


def parse_mapping(text: str, where: str, what: str, fix: str, error: type[SpecError] = SpecError) -> dict[str, Any]:
    """Parse YAML ``text`` (from ``where``) that must be one mapping; ``what`` says what it
    is ("spec", "tenants file") and ``fix`` where its format is shown. An empty document is
    refused, as are duplicate keys (naming the key and both lines) and YAML errors (their line)."""
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark some editors write
    loader = UniqueKeyLoader(text)
    try:
        raw = loader.get_single_data()
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error([f"{where}: YAML syntax error{yaml_position(e)} ({problem}) — fix the YAML"]) from None
    except RecursionError:
        raise error([f"{where}: nested too deeply to read — fix the YAML"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise error([f"{where}: key `{key}` is written twice (line {a} and line {b}) — keep one of them "
                         "(YAML would silently use the last)" for key, a, b in loader.duplicates])
    if raw is None:
        raise error([f"{where}: the {what} is empty — write its fields ({fix})"])
    if not isinstance(raw, dict):
        raise error([f"{where}: the {what} must be a YAML mapping of fields, got {type(raw).__name__} — {fix}"])
    return raw
