"""The tenants file's schema and loader: quotas, fair-share weights, priority classes and
per-tenant trust, every problem reported at once as ``field.path: what is wrong — how to fix``.

The format is documented, with an example of every field, in :mod:`lorafarm.tenants` (the
file users and the Helm chart are pointed at). Importable without Ray or torch: the pure
``policy``, the simulator and the CLI read it too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from pydantic_core import PydanticCustomError

from ..errors import SpecError
from .errors import Wording, dedupe, translate
from .model import NAME_PATTERN, OWN_WORDING
from .yamlio import parse_mapping, read_text

FORMAT_DOC = "lorafarm/tenants.py"  # the file's documented format, with an example of every field
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
ClassValue = Annotated[int, Field(ge=-1_000_000_000, le=1_000_000_000)]  # aged values stay exact floats


def _digest(value: str) -> str:
    if not (isinstance(value, str) and re.fullmatch(r"sha256:[0-9a-f]{64}", value)):
        # the value is never echoed: it may be a raw key pasted by mistake
        raise PydanticCustomError(OWN_WORDING, "is not a key digest — write sha256:<64 lowercase hex> "
                                  "(`python -m lorafarm.auth KEY` prints it; never the key itself)")
    return value


KeyDigest = Annotated[str, AfterValidator(_digest)]  # lorafarm.auth.hash_key's form
UriPrefix = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
DEFAULT_ENTRY = "default"


class TenantsError(SpecError):
    """The tenants file is wrong; ``problems`` lists every problem, one line each."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no inf/nan anywhere


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
    weight: float = Field(
        1.0, gt=0, le=1_000_000, description="Fair-share weight: twice the weight, twice the dominant share."
    )
    quota: Quota = Field(default_factory=Quota)
    guaranteed: Guarantee = Field(default_factory=Guarantee)
    priorities: list[Name] | None = Field(None, description="Priority classes this tenant may use (absent = all).")
    default_priority: Name | None = Field(None, description="Class of a job that names none (absent = the file's).")
    allow_trust_remote_code: bool = Field(False, description="Let this tenant's jobs run a base model's own code.")
    co_training: bool = Field(False, description="Let this tenant's jobs be co-trained: run in one process with other "
                              "co-training tenants' jobs on a shared base (each adapter as if alone; tenants that "
                              "share a process trust each other). A job opts out with training.co_train: never.")
    keys: list[KeyDigest] = Field(default_factory=list, description="sha256 digests of this tenant's API keys "
                                  "(`python -m lorafarm.auth` makes a key and its digest).")
    allowed_uris: list[UriPrefix] | None = Field(None, description="URI prefixes this tenant's specs may read "
                                                 "(data, eval data, base model); absent = anywhere outside other "
                                                 "tenants' store prefixes. Its own store prefix is always allowed.")


class PolicySettings(_Strict):
    aging_per_hour: float = Field(
        100.0, ge=0, le=1_000_000, description="Priority points a queued job gains per hour of waiting (0 = no aging)."
    )
    backfill: bool = Field(True, description="Start smaller jobs around a blocked head job, never delaying it.")
    preemption: bool = Field(False, description="A blocked job may stop running jobs of a lower class.")
    co_training_max_members: int = Field(
        4, ge=1, le=64, description="Most jobs one co-trained pack holds (1 = never pack).")
    co_training_join_after_s: float = Field(
        300.0, ge=0, description="A running pack takes in waiting compatible jobs once it has run this long (each "
        "join checkpoints its members and restarts the pack with the newcomers; they resume exactly).")


class TenantsConfig(_Strict):
    """The whole tenants file, plus the look-ups the scheduler and policy need."""

    priority_classes: dict[Name, ClassValue] = Field(
        default_factory=lambda: {"low": 0, "normal": 100, "high": 1000},
        description="Priority class name -> integer value; higher values are served first.",
    )
    default_priority: Name = Field("normal", description="Class of a job that names none.")
    unknown_tenants: Literal["default", "reject"] = Field(
        "default", description="default: tenants not listed use `tenants.default`; reject: refuse their jobs."
    )
    policy: PolicySettings = Field(default_factory=PolicySettings)
    admin_keys: list[KeyDigest] = Field(default_factory=list, description="sha256 digests of operators' API keys "
                                        "(every tenant's jobs; `run --direct`; reloading this file).")
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

    def co_training(self, name: str) -> bool:
        return self._entry(name).co_training

    def quota_dict(self, name: str) -> dict[str, float | int | None]:
        return self._entry(name).quota.model_dump()

    def guaranteed(self, name: str) -> Guarantee:
        return self._entry(name).guaranteed

    def max_queued(self, name: str) -> int | None:
        return self._entry(name).quota.max_queued

    def allows_remote_code(self, name: str) -> bool:
        entry = self.for_tenant(name)
        return bool(entry and entry.allow_trust_remote_code)

    def keyring(self):
        """Key digest → tenant (or admin) for :mod:`lorafarm.auth`; empty when no keys are listed."""
        from ..auth.keys import KeyRing

        return KeyRing({n: list(t.keys) for n, t in self.tenants.items() if n != DEFAULT_ENTRY}, list(self.admin_keys))

    def allowed_uris(self, name: str) -> list[str] | None:
        entry = self.for_tenant(name)
        return None if entry is None else entry.allowed_uris

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

TENANTS_WORDING = Wording(
    root=TenantsConfig,
    document="tenants file",
    fallback=f"see the example in {FORMAT_DOC}",
    missing_fix=f"add it (see the example in {FORMAT_DOC})",
    section="a mapping of fields",
    section_fix="write it as a mapping",
    number_example="2",
    list_example="[low, normal]",
    key_names={"tenants": "tenant name"},
)


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
        text = read_text(source, "tenants file", TenantsError)
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
        problems.extend(translate(e, TENANTS_WORDING))
    problems.extend(_cross_problems(raw))
    if problems:
        raise TenantsError(dedupe(problems))
    assert config is not None
    return config


def _parse(text: str, where: str) -> dict[str, Any]:
    return parse_mapping(text, where, "tenants file", f"see the example in {FORMAT_DOC}", TenantsError)


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
    out.extend(_key_problems(raw, tenants))
    return out


def _key_problems(raw: dict[str, Any], tenants: dict) -> list[str]:
    """A digest listed twice would make a key mean two callers; keys on `default` would name no tenant."""
    seen: dict[str, str] = {}
    out = []
    admin = raw.get("admin_keys")
    places = [(f"admin_keys[{i}]", d) for i, d in enumerate(admin)] if isinstance(admin, list) else []
    for tenant, entry in tenants.items():
        keys = entry.get("keys") if isinstance(entry, dict) else None
        if tenant == DEFAULT_ENTRY and keys:
            out.append("tenants.default.keys: a key names one tenant — list it under that tenant's own entry")
        if isinstance(keys, list):
            places += [(f"tenants.{tenant}.keys[{i}]", d) for i, d in enumerate(keys)]
    for where, digest in places:
        if not isinstance(digest, str):
            continue
        if digest in seen:
            out.append(f"{where}: the same key digest as {seen[digest]} — give each tenant (and admin) its own key")
        else:
            seen[digest] = where
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
