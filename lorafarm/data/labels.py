"""Which examples would train on nothing, named by row: for ``validate``, ``run`` and ``submit``.

An example whose labels are all cut off by ``training.seq_len`` (a long prompt) or all masked
is dropped, and a chat row whose template cannot be masked (it drops a system prompt, rewrites
a reply) cannot be used. Dropping a few is normal; above :data:`WARN_SHARE` of the examples it
is worth a warning, and a dataset where every example is dropped is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError
from ..spec import DatasetSpec
from .formats import Encoded, encode

WARN_SHARE = 0.02  # warn when more than this share of the examples is dropped
NAMED_ROWS = 5  # rows named in one message; the rest are counted


@dataclass
class LabelReport:
    """Rows that lose every label (``cut`` by seq_len, or ``masked``) and rows that ``unusable``
    (one "row: problem" line each), over ``examples`` examples."""

    examples: int
    seq_len: int
    on_bad_rows: str = "error"
    tokens: int = 0
    label_tokens: int = 0
    truncated: int = 0
    cut: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)
    unusable: list[str] = field(default_factory=list)

    def add(self, row: str, n_tokens: int, n_labels: int, truncated: bool, problem: str | None = None) -> None:
        """One encoded example, or the ``problem`` that made it unusable."""
        if problem:
            self.unusable.append(problem)
            return
        self.tokens += n_tokens
        self.label_tokens += n_labels
        self.truncated += truncated
        if not n_labels:
            (self.cut if truncated else self.masked).append(row)

    @property
    def dropped(self) -> int:
        return len(self.cut) + len(self.masked) + len(self.unusable)

    def rows(self) -> list[str]:
        """Every row that trains on nothing, in order found: cut, then masked."""
        return self.cut + self.masked

    def problems(self) -> list[str]:
        """What makes the dataset unrunnable: (under ``on_bad_rows: error``) rows the chat template
        cannot mask, or nothing left to train on."""
        if self.on_bad_rows == "error" and self.unusable:
            return [f"dataset: {_listed(self.unusable)} (or set dataset.on_bad_rows: skip to drop such rows)"]
        if self.examples and self.dropped == self.examples:
            return [f"dataset: every example loses all its labels — {self._fix()}"]
        return []

    def warnings(self) -> list[str]:
        """Rows dropped (named), when more than :data:`WARN_SHARE` of the examples."""
        found = []
        rows = self.rows()
        if rows and self.dropped < self.examples and len(rows) > WARN_SHARE * self.examples:
            found.append(f"dataset: {len(rows)} of {self.examples} examples ({len(rows) / self.examples:.1%}) lose "
                         f"all their labels and are dropped ({_listed(rows)}) — {self._fix()}")
        if self.on_bad_rows == "skip" and self.unusable:
            found.append(f"dataset: {len(self.unusable)} examples are skipped: {_listed(self.unusable)}")
        return found

    def _fix(self) -> str:
        if len(self.unusable) > len(self.rows()):
            return f"the chat template cannot mask them ({_listed(self.unusable)})"
        if len(self.cut) >= len(self.masked):
            return (f"the prompts fill the whole sequence (training.seq_len = {self.seq_len}): raise "
                    "training.seq_len or shorten the prompts")
        return "they have nothing to train on: check dataset.format and the chat template"


def _listed(items: list[str]) -> str:
    more = f", and {len(items) - NAMED_ROWS} more" if len(items) > NAMED_ROWS else ""
    return "; ".join(items[:NAMED_ROWS]) + more


def check_labels(examples: Iterable[dict[str, Any]], spec: DatasetSpec, tokenizer, seq_len: int
                 ) -> tuple[list[Encoded], LabelReport]:
    """Encode ``examples`` (rows with ``source_row``) and report those that train on nothing."""
    examples = list(examples)
    report = LabelReport(len(examples), seq_len, spec.on_bad_rows)
    encoded = []
    for i, example in enumerate(examples):
        row = example.get("source_row") or f"example {i}"
        try:
            enc = encode(example, spec, tokenizer, seq_len)
        except DataError as e:
            report.add(row, 0, 0, False, problem=str(e))
            continue
        report.add(row, len(enc.input_ids), enc.n_labels, enc.truncated)
        encoded.append(enc)
    return encoded, report
