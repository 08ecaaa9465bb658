"""``<store>/_service/estimates.json``: the estimator's learned step times, rewritten whole
(temp file + rename on a local store, one PUT on S3) so a restarted scheduler starts from what
the old one learned, never from a half-written file."""

from __future__ import annotations

import json

from ..storage import exists, join, read_bytes, write_bytes
from .estimator import Estimator

ESTIMATES_FILE = ("_service", "estimates.json")


def estimates_uri(store_root: str) -> str:
    return join(store_root, *ESTIMATES_FILE)


def load_estimator(store_root: str) -> Estimator:
    """The persisted estimator, or a fresh one (no file, or one that does not parse)."""
    uri = estimates_uri(store_root)
    try:
        if not exists(uri):
            return Estimator()
        return Estimator.from_json(json.loads(read_bytes(uri)))
    except (OSError, ValueError, TypeError):
        return Estimator()  # a damaged file costs what was learned, never the scheduler


def save_estimator(store_root: str, estimator: Estimator) -> None:
    write_bytes(estimates_uri(store_root), json.dumps(estimator.to_json(), separators=(",", ":")).encode())
