"""Co-training (issue 20): several jobs' adapters trained on one shared frozen base.

The names below load torch on first use only: the scheduler imports :mod:`.compat` (pure)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {"member_optimizer": ".optim", "add_member": ".routing", "member_loss": ".routing",
          "member_parameters": ".routing", "member_state": ".routing", "new_pack": ".routing", "routed": ".routing"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
