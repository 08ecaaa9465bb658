"""Use a finished adapter: try it side by side with the base, evaluate it, at any strength.

One base is loaded once; every adapter becomes a PEFT *named* adapter on it (``a0``, ``a1``,
...), so several adapters and several scales share one process and one copy of the base.
The base's own output comes from the same model with the adapters disabled.

- :mod:`.load` — resolve sources (store URI, local directory, job id), pull them verified,
  check they fit the base, activate one adapter at one scale.
- :mod:`.generate` — ``lorafarm try``: render prompts as the job saw them, greedy generation.
- :mod:`.evaluate` — ``lorafarm eval``: token loss / perplexity with the training masks, and
  label accuracy for labelled sets; results written beside the adapter.

Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

__all__: list[str] = []
