"""Load a spec from YAML plus ``--set`` overrides, and turn every problem into one line:
``field.path: what is wrong — how to fix``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError
from .checks import RULES
from .errors import Wording, dedupe, translate
from .model import SECTIONS, JobSpec
from .yamlio import parse_mapping, read_text

SPEC_WORDING = Wording(
    root=JobSpec,
    document="spec",
    fallback="see `lorafarm schema` for the field's type",
    missing_fix="add it (see `lorafarm schema`)",
    section="a section of fields",
    section_fix="write it as a mapping (see `lorafarm schema`)",
    number_example="0.1",
    list_example="[q_proj, v_proj]",
    skip_loc=frozenset({"list[str]", "literal['all-linear']", "str", "int", "float", "bool"}),
)


def parse_overrides(pairs: list[str] | None) -> list[tuple[str, Any]]:
    """``["training.max_steps=20"]`` → ``[("training.max_steps", 20)]``; values are YAML scalars."""
    out, problems = [], []
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {pair!r}: not of the form dotted.path=value — write e.g. --set training.max_steps=20")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    if problems:
        raise SpecError(problems)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    problems = []
    for key, value in overrides:
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    f"{'.'.join(parts[: i + 1])}: is a value, not a section, so --set {key} cannot apply — "
                    f"set {'.'.join(parts[: i + 1])} itself"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise SpecError(problems)
    return raw


SPEC_FIX = "see jobs/quickstart.yaml or `lorafarm schema`"


def load_raw(source: str | Path) -> dict[str, Any]:
    """The spec file's mapping: UTF-8, valid YAML, no key written twice, not empty."""
    return parse_yaml(read_text(source, "spec file"), str(source))


def parse_yaml(text: str, where: str = "spec") -> dict[str, Any]:
    return parse_mapping(text, where, "spec", SPEC_FIX)


def load_spec(source: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, override and validate a spec file; raise :class:`SpecError` with every problem."""
    raw = load_raw(source)
    return validate_spec(apply_overrides(raw, parse_overrides(overrides)))


def validate_spec(raw: dict[str, Any]) -> JobSpec:
    problems: list[str] = []
    spec: JobSpec | None = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        problems.extend(translate(e, SPEC_WORDING))
    problems.extend(_cross_problems(raw, spec))
    if problems:
        raise SpecError(dedupe(problems))
    assert spec is not None
    return spec


def spec_digest(spec: JobSpec) -> str:
    """sha256 of the canonical JSON of the validated spec (defaults included)."""
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


# Fields a checkpoint may be resumed under with another value: where and how fast the job
# runs, never what it computes (the global batch is fixed, so the worker count is free).
RESUME_FREE_FIELDS = {
    "priority": None,
    "resources": None,
    "zero": ("stage", "gradient_checkpointing"),
    "training": ("checkpoint_every_steps", "keep_last", "max_failures", "eval_every_steps", "micro_batch_size",
                 "co_train"),
}


def _resume_relevant(data: dict[str, Any]) -> dict[str, Any]:
    """A spec's JSON form without the fields free on resume (``RESUME_FREE_FIELDS``)."""
    data = json.loads(json.dumps(data))
    for section, fields in RESUME_FREE_FIELDS.items():
        if fields is None:
            data.pop(section, None)
        else:
            for f in fields:
                (data.get(section) or {}).pop(f, None)
    return data


def resume_digest(spec: JobSpec) -> str:
    """sha256 of the fields that decide the training result: equal digests may resume each
    other's checkpoints (other workers, another ZeRO stage, another micro batch)."""
    blob = json.dumps(_resume_relevant(spec.model_dump(mode="json")), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def resume_differences(old_spec: dict[str, Any], new_spec: JobSpec) -> list[str]:
    """The fields that decide the result and differ between a checkpoint's spec (its JSON
    form, as saved) and ``new_spec``, each as ``path: old → new``, in schema order."""
    old = _flatten(_resume_relevant(old_spec))
    new = _flatten(_resume_relevant(new_spec.model_dump(mode="json")))
    return [f"{path}: {json.dumps(old.get(path))} → {json.dumps(new.get(path))}"
            for path in list(new) + [p for p in old if p not in new] if old.get(path) != new.get(path)]


RESUME_FREE = ("resources, priority, zero.stage, zero.gradient_checkpointing, training.micro_batch_size, "
               "training.co_train and the checkpoint/eval settings")


def resume_refusal(old_spec: dict[str, Any] | None, new_spec: JobSpec) -> str:
    """Why a checkpoint cannot resume under ``new_spec`` (its digest differs), naming every
    changed field when the checkpoint saved its spec; the fix."""
    changed = resume_differences(old_spec, new_spec) if isinstance(old_spec, dict) else []
    free = f"only {RESUME_FREE} may change on resume"
    if changed:
        return f"made with other values of {'; '.join(changed)} — restore them, or run it as a new job ({free})"
    return f"made for a different spec — restore the spec, or run it as a new job ({free})"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def dump_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()


# -- rules across sections ------------------------------------------------------------------


def _cross_problems(raw: dict[str, Any], spec: JobSpec | None) -> list[str]:
    sections: dict[str, BaseModel] = {}
    if spec is not None:
        sections = {name: getattr(spec, name) for name in SECTIONS}
    else:
        for name, cls in SECTIONS.items():
            value = raw.get(name, {}) if isinstance(raw, dict) else {}
            try:
                sections[name] = cls.model_validate(value if value is not None else {})
            except ValidationError:
                continue
    out = []
    for needs, rule in RULES:
        if all(n in sections for n in needs):
            out.extend(rule(*(sections[n] for n in needs)))
    return out
