"""Refusals of a caller (picklable: they cross Ray from the scheduler to the CLI)."""

from __future__ import annotations

from ..errors import LorafarmError


class AuthError(LorafarmError):
    """No key, or a key the scheduler does not know (HTTP 401)."""

    exit_code = 2


class Forbidden(LorafarmError):
    """A known key asking for what its tenant may not do (HTTP 403)."""

    exit_code = 2
