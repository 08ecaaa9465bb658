"""Key digests and the key → tenant map the scheduler checks every call against."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .errors import AuthError

DIGEST_PREFIX = "sha256:"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
ADMIN = "*admin*"  # the caller label of an operator's key (never a tenant name: names are [a-z0-9-])
KEY_HELP = "set LORAFARM_API_KEY to your tenant's key, or pass --key-file FILE (ask the operator for one)"


def hash_key(key: str) -> str:
    """The digest the tenants file lists for ``key`` (``sha256:<64 hex>``)."""
    return DIGEST_PREFIX + hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits), for operators: ``python -m lorafarm.auth``."""
    return "lf_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Caller:
    """Who a call comes from: one tenant, or an operator (``admin``: every tenant)."""

    tenant: str | None
    admin: bool = False

    def may_act_for(self, tenant: str) -> bool:
        return self.admin or self.tenant == tenant

    @property
    def label(self) -> str:
        return "admin" if self.admin else f"tenant {self.tenant}"


class KeyRing:
    """Digest → tenant (or admin). Empty: keys are off and every caller is trusted (one team)."""

    def __init__(self, tenant_digests: dict[str, list[str]], admin_digests: list[str]):
        self._entries: list[tuple[bytes, str]] = [
            (d.encode(), tenant) for tenant, ds in tenant_digests.items() for d in ds
        ] + [(d.encode(), ADMIN) for d in admin_digests]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def identify(self, key: str | None) -> Caller | None:
        """The caller ``key`` belongs to; None when keys are off. Raises :class:`AuthError`
        for no key or an unknown one. Every digest is compared (constant time, no early exit),
        so the time taken says nothing about which digest came closest."""
        if not self._entries:
            return None
        if not key or not key.strip():
            raise AuthError(f"this scheduler requires an API key and none was sent — {KEY_HELP}")
        digest = hash_key(key).encode()
        found: str | None = None
        for known, who in self._entries:
            if hmac.compare_digest(known, digest):
                found = who
        if found is None:
            raise AuthError(f"the API key sent is not valid for this scheduler — {KEY_HELP}")
        return Caller(tenant=None, admin=True) if found == ADMIN else Caller(tenant=found)
