"""The job spec and the tenants file: schemas, YAML loading (``--set`` overrides for a spec),
every problem at once, worded by one translator (:mod:`.errors`).

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
    resume_differences,
    resume_digest,
    resume_refusal,
    spec_digest,
    validate_spec,
)
from .model import NAME_PATTERN, DatasetSpec, JobSpec, LoraSpec, ResourcesSpec, TrainingSpec, ZeroSpec
from .steps import cap_intervals, steps_per_epoch, total_steps
from .tenants import TenantsConfig, TenantsError, load_tenants, validate_tenants

__all__ = [
    "NAME_PATTERN",
    "DatasetSpec",
    "JobSpec",
    "LoraSpec",
    "ResourcesSpec",
    "TenantsConfig",
    "TenantsError",
    "TrainingSpec",
    "ZeroSpec",
    "apply_overrides",
    "cap_intervals",
    "dump_yaml",
    "json_schema",
    "load_raw",
    "load_spec",
    "load_tenants",
    "parse_overrides",
    "parse_yaml",
    "resume_differences",
    "resume_digest",
    "resume_refusal",
    "spec_digest",
    "steps_per_epoch",
    "total_steps",
    "validate_spec",
    "validate_tenants",
]
