"""What a tenant's spec may not ask for: remote code unless its tenant allows it, and reading
under another tenant's store prefix (checked at submit, before anything is queued)."""

from __future__ import annotations

from ..spec import JobSpec, TenantsConfig
from ..storage import is_under, join


def trust_problems(spec: JobSpec, tenants: TenantsConfig, store_root: str) -> list[str]:
    problems = []
    if spec.trust_remote_code and not tenants.allows_remote_code(spec.tenant):
        problems.append(f"trust_remote_code: not allowed for tenant {spec.tenant!r} — remove it, or ask the "
                        "operator to set allow_trust_remote_code in the tenants file")
    # a tenant reads only under its own store prefix, however a URI spells it (``..``, symlinks,
    # file://, s3a://, letter case, repeated slashes): both sides are compared in canonical form
    own = join(store_root, spec.tenant)
    for field, uri in (("dataset.uri", spec.dataset.uri), ("dataset.eval_uri", spec.dataset.eval_uri),
                       ("base_model", spec.base_model)):
        if uri and is_under(uri, store_root) and not is_under(uri, own):
            problems.append(f"{field}: {uri} is under another tenant's store prefix — tenants read only "
                            f"under {own.rstrip('/')}/")
    return problems
