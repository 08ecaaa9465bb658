"""The tenants file: quotas, fair-share weights, priority classes and per-tenant trust.

One YAML file, read by ``lorafarm serve --tenants``; every problem is reported at once as
``field.path: what is wrong — how to fix``. Example (every field, with its default)::

    priority_classes: {low: 0, normal: 100, high: 1000}   # name -> integer value, higher first
    default_priority: normal        # class of a job that names none (a tenant may override it)
    unknown_tenants: default        # default: tenants not listed use `tenants.default`; reject: refuse them
    policy:
      aging_per_hour: 100           # priority points a queued job gains per hour of waiting
      backfill: true                # start smaller jobs around a blocked head without delaying it
      preemption: false             # a higher class may stop lower-class running jobs
    tenants:
      default:                      # required unless unknown_tenants is reject
        weight: 1                   # fair-share weight (> 0)
        quota: {workers: 8, gpus: 8, cpus: 64, max_queued: 100}   # each optional; absent = no limit
        guaranteed: {gpus: 2}       # preemption never takes the tenant below this (workers/gpus/cpus; absent = 0)
      acme:
        weight: 2
        quota: {gpus: 16}
        priorities: [low, normal, high]   # classes this tenant may use (absent = all)
        default_priority: normal
        allow_trust_remote_code: false

Importable without Ray or torch: the pure ``policy`` and the CLI read it too.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .errors import SpecError
from .spec.model import NAME_PATTERN, NAME_RULE

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
DEFAULT_ENTRY = "default"


class TenantsError(SpecError):
    """The tenants file is wrong; ``problems`` lists every problem, one line each."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Quota(_Strict):
    """Limits on one tenant's running jobs together (absent = no limit)."""

    workers: int | None = Field(None, ge=0, description="Most workers running at once.")
    gpus: float | None = Field(None, ge=0, description="Most GPUs held at once (workers × gpus_per_worker).")
    cpus: float | None = Field(None, ge=0, description="Most CPUs held at once (workers × cpus_per_worker).")
    max_queued: int | None = Field(None, ge=0, description="Most jobs waiting in the queue; more are refused.")


class Guarantee(_Strict):
    """What preemption never takes a tenant below (absent = nothing guaranteed)."""

    workers: int | None = Field(None, ge=0, description="Workers this tenant keeps running when preempted.")
    gpus: float | None = Field(None, ge=0, description="GPUs this tenant keeps when preempted.")
    cpus: float | None = Field(None, ge=0, description="CPUs this tenant keeps when preempted.")


class Tenant(_Strict):
    weight: float = Field(1.0, gt=0, description="Fair-share weight: twice the weight, twice the dominant share.")
    quota: Quota = Field(default_factory=Quota)
    guaranteed: Guarantee = Field(default_factory=Guarantee)
    priorities: list[Name] | None = Field(None, description="Priority classes this tenant may use (absent = all).")
    default_priority: Name | None = Field(None, description="Class of a job that names none (absent = the file's).")
    allow_trust_remote_code: bool = Field(False, description="Let this tenant's jobs run a base model's own code.")


class PolicySettings(_Strict):
    aging_per_hour: float = Field(
        100.0, ge=0, description="Priority points a queued job gains per hour of waiting (0 = no aging)."
    )
    backfill: bool = Field(True, description="Start smaller jobs around a blocked head job, never delaying it.")
    preemption: bool = Field(False, description="A blocked job may stop running jobs of a lower class.")


class TenantsConfig(_Strict):
    """The whole tenants file, plus the look-ups the scheduler and policy need."""

    priority_classes: dict[Name, int] = Field(
        default_factory=lambda: {"low": 0, "normal": 100, "high": 1000},
        description="Priority class name -> integer value; higher values are served first.",
    )
    default_priority: Name = Field("normal", description="Class of a job that names none.")
    unknown_tenants: Literal["default", "reject"] = Field(
        "default", description="default: tenants not listed use `tenants.default`; reject: refuse their jobs."
    )
    policy: PolicySettings = Field(default_factory=PolicySettings)
    tenants: dict[Name, Tenant] = Field(default_factory=dict)

    # -- look-ups (a tenant not listed gets the `default` entry, or a built-in unlimited one) --
    def for_tenant(self, name: str) -> Tenant | None:
        """The entry that applies to ``name``, or None when unknown tenants are rejected."""
        if name in self.tenants and name != DEFAULT_ENTRY:
            return self.tenants[name]
        if self.unknown_tenants == "reject":
            return None
        return self.tenants.get(DEFAULT_ENTRY, _UNLIMITED)

    def entry_path(self, name: str) -> str:
        """Where ``name``'s settings live in the file, for messages."""
        listed = name in self.tenants and name != DEFAULT_ENTRY
        return f"tenants.{name}" if listed else f"tenants.{DEFAULT_ENTRY}"

    def tenant_names(self) -> list[str]:
        return sorted(n for n in self.tenants if n != DEFAULT_ENTRY)

    def _entry(self, name: str) -> Tenant:
        return self.for_tenant(name) or _UNLIMITED

    def weight(self, name: str) -> float:
        return self._entry(name).weight

    def quota(self, name: str) -> Quota:
        return self._entry(name).quota

    def quota_dict(self, name: str) -> dict[str, float | int | None]:
        return self._entry(name).quota.model_dump()

    def guaranteed(self, name: str) -> Guarantee:
        return self._entry(name).guaranteed

    def max_queued(self, name: str) -> int | None:
        return self._entry(name).quota.max_queued

    def allows_remote_code(self, name: str) -> bool:
        entry = self.for_tenant(name)
        return bool(entry and entry.allow_trust_remote_code)

    def allowed_priorities(self, name: str) -> frozenset[str]:
        allowed = self._entry(name).priorities
        return frozenset(self.priority_classes if allowed is None else allowed)

    def default_priority_for(self, name: str) -> str:
        return self._entry(name).default_priority or self.default_priority

    def priority_value(self, priority: str) -> int:
        """A class's value; a class no longer in the file counts as the default class."""
        value = self.priority_classes.get(priority)
        return self.priority_classes.get(self.default_priority, 0) if value is None else value


_UNLIMITED = Tenant()


def load_tenants(source: str | Path | None) -> TenantsConfig:
    """Read and validate a tenants file; raise :class:`TenantsError` with every problem.

    ``source`` is a :class:`Path`, a ``str`` path ending in .yaml/.yml/.json, or YAML text;
    None gives the built-in config (three classes, every tenant unlimited, weight 1).
    """
    if source is None:
        return TenantsConfig()
    where = "tenants file"
    if isinstance(source, Path) or (source.endswith((".yaml", ".yml", ".json")) and "\n" not in source):
        where = str(source)
        try:
            text = Path(source).read_text()
        except OSError as e:
            raise TenantsError([f"{where}: cannot read the tenants file ({e.strerror}) — check the path"]) from None
    else:
        text = source
    return validate_tenants(_parse(text, where))


def validate_tenants(raw: dict[str, Any]) -> TenantsConfig:
    """Validate an already-parsed tenants mapping (every problem at once)."""
    problems: list[str] = []
    config: TenantsConfig | None = None
    try:
        config = TenantsConfig.model_validate(raw)
    except ValidationError as e:
        problems.extend(_describe(err) for err in e.errors())
    problems.extend(_cross_problems(raw))
    if problems:
        raise TenantsError(list(dict.fromkeys(problems)))
    assert config is not None
    return config


def _parse(text: str, where: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise TenantsError([f"{where}: YAML syntax error{at} — fix the YAML"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TenantsError([f"{where}: must be a YAML mapping (priority_classes, tenants, ...), "
                            f"got {type(raw).__name__} — see the example in lorafarm/tenants.py"])
    return raw


# -- rules across fields: they read the raw mapping so that they run even when a field is bad --


def _cross_problems(raw: dict[str, Any]) -> list[str]:
    classes = raw.get("priority_classes", TenantsConfig.model_fields["priority_classes"].default_factory())
    names = sorted(classes) if isinstance(classes, dict) else []
    out = []
    if isinstance(classes, dict) and not classes:
        out.append("priority_classes: is empty — name at least one class, e.g. {normal: 100}")
    default = raw.get("default_priority", "normal")
    if names and isinstance(default, str) and default not in classes:
        out.append(f"default_priority: {default!r} is not a priority class — use one of {', '.join(names)}")
    tenants = raw.get("tenants") or {}
    if not isinstance(tenants, dict):
        return out
    if raw.get("unknown_tenants", "default") == "default" and DEFAULT_ENTRY not in tenants:
        out.append("tenants.default: missing — add a `default` entry (used for tenants not listed), "
                   "or set unknown_tenants: reject")
    for tenant, entry in tenants.items():
        if isinstance(entry, dict) and names:
            out.extend(_tenant_problems(f"tenants.{tenant}", entry, classes, default))
    return out


def _tenant_problems(path: str, entry: dict[str, Any], classes: dict, default: Any) -> list[str]:
    out = []
    allowed = entry.get("priorities")
    if isinstance(allowed, list):
        for i, name in enumerate(allowed):
            if isinstance(name, str) and name not in classes:
                out.append(f"{path}.priorities[{i}]: {name!r} is not a priority class — use one of "
                           f"{', '.join(sorted(classes))}")
    own = entry.get("default_priority")
    if isinstance(own, str) and own not in classes:
        out.append(f"{path}.default_priority: {own!r} is not a priority class — use one of "
                   f"{', '.join(sorted(classes))}")
    effective = own if own is not None else default
    if isinstance(allowed, list) and isinstance(effective, str) and effective in classes and effective not in allowed:
        source = "" if own is not None else " (the file's default_priority)"
        out.append(f"{path}.default_priority: {effective!r}{source} is not in {path}.priorities — set "
                   f"{path}.default_priority to one of {', '.join(map(str, allowed)) or 'them'}, or allow it")
    return out


# -- pydantic errors as one line each ---------------------------------------------------------


def _path(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if p == "[key]":
            continue  # a bad mapping key: the path already ends with it
        parts.append(f"[{p}]" if isinstance(p, int) else ("." if parts else "") + str(p))
    return "".join(parts) or "tenants file"


def _fields_at(loc: tuple) -> list[str]:
    """The field names valid where ``loc`` ends, for "did you mean" hints."""
    model: Any = TenantsConfig
    expect_key = False
    for p in loc[:-1]:
        if expect_key:
            expect_key = False
            continue
        field = model.model_fields.get(str(p)) if isinstance(model, type) else None
        if field is None:
            return []
        ann = _unwrap(field.annotation)
        if typing.get_origin(ann) is dict:
            model, expect_key = _unwrap(typing.get_args(ann)[1]), True
        else:
            model = ann
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _unwrap(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    path, kind, got = _path(loc), err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        names = _fields_at(loc)
        close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"known fields here: {', '.join(names)}"
        return f"{path}: unknown field — {hint} (remove or rename it)"
    if kind == "string_pattern_mismatch":
        what = "tenant name" if loc[:1] == ("tenants",) and loc[-1] == "[key]" else "name"
        return f"{path}: {got!r} is not a valid {what} — use {NAME_RULE}"
    if kind == "literal_error":
        return f"{path}: {got!r} is not allowed — use one of {ctx.get('expected', '')}"
    if kind in ("greater_than", "greater_than_equal"):
        bound = "> " if kind == "greater_than" else ">= "
        return f"{path}: {got!r} is out of range — use a value {bound}{next(iter(ctx.values()), '')}"
    if kind in ("model_type", "dict_type"):
        return f"{path}: expected a mapping of fields, got {type(got).__name__} {got!r} — write it as a mapping"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{path}: {got!r} is not an integer — write a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{path}: {got!r} is not a number — write a number such as 2"
    if kind in ("bool_parsing", "bool_type"):
        return f"{path}: {got!r} is not true/false — write true or false"
    if kind == "string_type":
        return f"{path}: expected text, got {type(got).__name__} {got!r} — quote the value"
    if kind == "list_type":
        return f"{path}: expected a list, got {got!r} — write a YAML list such as [low, normal]"
    return f"{path}: {err['msg']} — see the example in lorafarm/tenants.py"
