"""Pydantic's validation errors as one line each: ``field.path: what is wrong — how to fix``.

The job spec and the tenants file share this translator; a :class:`Wording` holds what differs
between them (the model to suggest field names from, the examples a fix quotes).
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .model import NAME_RULE, OWN_WORDING

_BOUNDS = {"greater_than": "> ", "greater_than_equal": ">= ", "less_than": "< ", "less_than_equal": "<= "}


@dataclass(frozen=True)
class Wording:
    """How one kind of document words its problems."""

    root: type[BaseModel]  # the document's model: where "did you mean" looks for field names
    document: str  # the path of a problem with the whole document
    fallback: str  # the fix of an error without its own wording
    missing_fix: str  # how to add a required field
    section: str  # what a nested mapping is called
    section_fix: str  # how to write one
    number_example: str
    list_example: str
    skip_loc: frozenset[str] = frozenset()  # names pydantic puts in ``loc`` that are no field
    key_names: dict[str, str] = field(default_factory=dict)  # mapping field -> what its keys are called


def translate(error: ValidationError, wording: Wording) -> list[str]:
    """Every error of ``error``, one line each, in pydantic's order."""
    return [describe(err, wording) for err in error.errors()]


def dedupe(lines: list[str]) -> list[str]:
    """``lines`` in order, each once: two rules may find the same problem."""
    return list(dict.fromkeys(lines))


def yaml_position(error: yaml.YAMLError) -> str:
    """`` at line L, column C`` of a YAML syntax error, or nothing when YAML gives no position."""
    mark = getattr(error, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def describe(err: Any, wording: Wording) -> str:
    loc = tuple(err["loc"])
    path, kind, got = field_path(loc, wording), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        names = fields_at(loc, wording.root)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known fields here: {', '.join(names)}"
        return f"{path}: unknown field — {hint} (remove or rename it)"
    if kind == "missing":
        return f"{path}: required field is missing — {wording.missing_fix}"
    if kind == "literal_error":
        return f"{path}: {got!r} is not allowed — use one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        what = wording.key_names.get(str(loc[0]), "name") if loc[-1:] == ("[key]",) else "name"
        return f"{path}: {got!r} is not a valid {what} — use {NAME_RULE}"
    if kind in _BOUNDS:
        return f"{path}: {got!r} is out of range — use a value {_BOUNDS[kind]}{next(iter(ctx.values()), '')}"
    if kind == OWN_WORDING:
        return f"{path}: {err['msg']}"
    if kind == "finite_number":
        return f"{path}: {got!r} is not a finite number — write a number such as {wording.number_example}"
    if kind == "too_short":
        return f"{path}: must not be empty — write a YAML list such as {wording.list_example}"
    if kind == "string_too_short":
        return f"{path}: must not be empty — give a value"
    if kind in ("model_type", "dict_type"):
        return f"{path}: expected {wording.section}, got {type(got).__name__} {got!r} — {wording.section_fix}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{path}: {got!r} is not an integer — write a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{path}: {got!r} is not a number — write a number such as {wording.number_example}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{path}: {got!r} is not true/false — write true or false"
    if kind == "string_type":
        return f"{path}: expected text, got {type(got).__name__} {got!r} — quote the value"
    if kind == "list_type":
        return f"{path}: expected a list, got {got!r} — write a YAML list such as {wording.list_example}"
    return f"{path}: {err['msg']} — {wording.fallback}"


def field_path(loc: tuple, wording: Wording) -> str:
    """``("lora", "target_modules", 0)`` → ``lora.target_modules[0]``."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p == "[key]" or p in wording.skip_loc:
            continue  # a bad mapping key (the path already ends with it), or a union branch's name
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or wording.document


def fields_at(loc: tuple, root: type[BaseModel]) -> list[str]:
    """The field names valid where ``loc`` ends, for "did you mean" hints."""
    model: Any = root
    expect_key = False
    for p in loc[:-1]:
        if expect_key:
            expect_key = False
            continue
        found = model.model_fields.get(str(p)) if isinstance(model, type) else None
        if found is None:
            return []
        ann = _unwrap_optional(found.annotation)
        if typing.get_origin(ann) is dict:
            model, expect_key = _unwrap_optional(typing.get_args(ann)[1]), True
        else:
            model = ann
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _unwrap_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann
