"""The tenants file: quotas, fair-share weights, priority classes and per-tenant trust.

One YAML file, read by ``lorafarm serve --tenants``; every problem is reported at once as
``field.path: what is wrong — how to fix``. Example (every field, with its default)::

    priority_classes: {low: 0, normal: 100, high: 1000}   # name -> integer value, higher first
    default_priority: normal        # class of a job that names none (a tenant may override it)
    unknown_tenants: default        # default: tenants not listed use `tenants.default`; reject: refuse them
    admin_keys: [sha256:…]          # digests of operators' API keys: every tenant's jobs, `run --direct`, reloads
    policy:
      aging_per_hour: 100           # priority points a queued job gains per hour of waiting
      backfill: true                # start smaller jobs around a blocked head without delaying it
      preemption: false             # a higher class may stop lower-class running jobs
      co_training_max_members: 4    # most jobs in one co-trained pack (1 = never pack)
      co_training_join_after_s: 300 # a running pack takes in waiting compatible jobs after this long
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
        co_training: false          # true: its jobs may share one process and base with other co-training
                                    # tenants' compatible jobs (a pack; each adapter as if trained alone)
        keys: [sha256:…]            # digests of this tenant's API keys (absent everywhere = keys off, one team)
        allowed_uris: [s3://datasets/acme/, /shared/models/]   # prefixes its specs may read (absent = anywhere
                                    # outside other tenants' store prefixes; its own prefix is always allowed)

API keys: ``python -m lorafarm.auth`` prints a new key and its ``sha256:`` digest; only the
digest goes in this file. Clients send the key from ``LORAFARM_API_KEY`` or ``--key-file``; the
scheduler maps it to its tenant, refuses specs naming another tenant, and shows each tenant only
its own jobs. With no keys listed, ``lorafarm serve`` warns that tenants are unauthenticated.

The schema and loader live in :mod:`lorafarm.spec.tenants`; this module is their public name.
Importable without Ray or torch: the pure ``policy`` and the CLI read it too.
"""

from .spec.tenants import (
    DEFAULT_ENTRY,
    Guarantee,
    PolicySettings,
    Quota,
    Tenant,
    TenantsConfig,
    TenantsError,
    load_tenants,
    validate_tenants,
)

__all__ = [
    "DEFAULT_ENTRY",
    "Guarantee",
    "PolicySettings",
    "Quota",
    "Tenant",
    "TenantsConfig",
    "TenantsError",
    "load_tenants",
    "validate_tenants",
]
