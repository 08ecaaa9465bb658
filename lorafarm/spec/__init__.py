"""The job spec: schema, YAML loading with ``--set`` overrides, every problem at once.

Importable without torch or Ray.
"""

from .load import (
    apply_overrides,
    dump_yaml,
    json_schema,
    load_raw,
    load_spec,
    parse_overrides,
    parse_yaml,
    resume_digest,
    spec_digest,
    validate_spec,
)
from .model import NAME_PATTERN, DatasetSpec, JobSpec, LoraSpec, ResourcesSpec, TrainingSpec, ZeroSpec

__all__ = [
    "NAME_PATTERN",
    "DatasetSpec",
    "JobSpec",
    "LoraSpec",
    "ResourcesSpec",
    "TrainingSpec",
    "ZeroSpec",
    "apply_overrides",
    "dump_yaml",
    "json_schema",
    "load_raw",
    "load_spec",
    "parse_overrides",
    "parse_yaml",
    "resume_digest",
    "spec_digest",
    "validate_spec",
]
