"""The client's key: ``--key-file`` (set by the CLI) or ``LORAFARM_API_KEY``. Held in memory only."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpecError

ENV_KEY = "LORAFARM_API_KEY"
_key_from_file: str | None = None


def set_client_key(key_file: str | None) -> None:
    """Read ``--key-file`` (its first non-empty line is the key); a bad file is a usage error."""
    global _key_from_file
    if key_file is None:
        _key_from_file = None
        return
    try:
        text = Path(key_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise SpecError([f"--key-file {key_file}: cannot be read ({reason}) — give a file holding your API key"]) \
            from None
    key = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not key:
        raise SpecError([f"--key-file {key_file}: is empty — write your API key in it"])
    _key_from_file = key


def client_key() -> str | None:
    """The key this client sends: ``--key-file``'s, else ``$LORAFARM_API_KEY``, else None."""
    return _key_from_file or (os.environ.get(ENV_KEY) or "").strip() or None
