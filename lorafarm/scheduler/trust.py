"""What a tenant's spec may not ask for: remote code unless its tenant allows it, reading under
another tenant's store prefix, and reading outside its ``allowed_uris`` (checked at submit,
before anything is queued).

Every URI a spec names (``dataset.uri``, ``dataset.eval_uri``, and ``base_model`` when it is a
path or URI rather than a built-in or hub name) is compared in canonical form
(:func:`lorafarm.storage.canonical`: scheme aliases and case, ``file://`` vs plain paths,
``.``/``..``, repeated and trailing slashes, symlinks of local paths), on both sides. A glob is
judged by the directory it starts expanding in: ``/sto*/bob/x`` could match under the store,
so it is refused like a path there."""

from __future__ import annotations

import re
from pathlib import Path

from ..spec import JobSpec, TenantsConfig
from ..storage import is_remote, is_under, join

_GLOB = re.compile(r"[*?\[]")


def spec_uris(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, uri) for every location the spec reads."""
    out = [("dataset.uri", spec.dataset.uri)]
    if spec.dataset.eval_uri:
        out.append(("dataset.eval_uri", spec.dataset.eval_uri))
    if names_location(spec.base_model):
        out.append(("base_model", spec.base_model))
    return out


def names_location(base_model: str) -> bool:
    """Whether ``base_model`` is a path or URI (checked) rather than a built-in or hub name."""
    return (is_remote(base_model) or "://" in base_model or base_model.startswith(("/", ".", "~"))
            or Path(base_model).exists())


def literal_prefix(uri: str) -> str:
    """``uri`` up to the directory its first glob character is in (``uri`` itself without one)."""
    m = _GLOB.search(uri)
    return uri if m is None else uri[: uri.rfind("/", 0, m.start()) + 1] or "."


def _reaches(uri: str, prefix: str) -> bool:
    """Whether ``uri`` can read something under ``prefix``: it is under it, or it is a glob
    whose literal part is above it (its expansion may descend into it)."""
    if is_under(uri, prefix):
        return True
    literal = literal_prefix(uri)
    return literal != uri and is_under(prefix, literal)


def _within(uri: str, prefix: str) -> bool:
    """Whether everything ``uri`` can read lies under ``prefix`` (a glob: its literal part)."""
    return is_under(literal_prefix(uri), prefix)


def trust_problems(spec: JobSpec, tenants: TenantsConfig, store_root: str) -> list[str]:
    problems = []
    if spec.trust_remote_code and not tenants.allows_remote_code(spec.tenant):
        problems.append(f"trust_remote_code: not allowed for tenant {spec.tenant!r} — remove it, or ask the "
                        "operator to set allow_trust_remote_code in the tenants file")
    own = join(store_root, spec.tenant)
    allowed = tenants.allowed_uris(spec.tenant)
    for field, uri in spec_uris(spec):
        if _within(uri, own):
            continue  # a tenant always reads its own prefix
        if _reaches(uri, store_root):
            problems.append(f"{field}: {uri} is under another tenant's store prefix — tenants read only "
                            f"under {own.rstrip('/')}/")
        elif allowed is not None and not any(_within(uri, prefix) for prefix in allowed):
            listed = ", ".join(allowed) or "none"
            problems.append(f"{field}: {uri} is outside tenant {spec.tenant!r}'s allowed_uris ({listed}) — read "
                            f"from under one of them or {own.rstrip('/')}/, or ask the operator to allow it")
    return problems
