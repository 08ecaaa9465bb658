"""Who is calling: tenant API keys, hashed in the tenants file, mapped to their tenant.

Keys are long random strings a tenant holds; the tenants file holds only their
``sha256:<hex>`` digests. A key is never logged, stored or sent anywhere but to the
scheduler (or its REST API), which hashes it and compares digests in constant time."""

from .errors import AuthError, Forbidden
from .keys import ADMIN, Caller, KeyRing, hash_key, new_key
from .secret import client_key, set_client_key

__all__ = ["ADMIN", "AuthError", "Caller", "Forbidden", "KeyRing", "client_key", "hash_key", "new_key",
           "set_client_key"]
