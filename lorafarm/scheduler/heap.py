"""Keep the cyclic garbage collector off the scheduler's long-lived records.

A service's scheduler holds every job record it knows (tens of thousands, each a spec's worth of
dicts and lists) for its whole life. Python's collector walks all of them in each full
collection, and the allocations of a burst of admissions trigger those: measured, ~25 % of an
idle cluster's admission time with 10,000 queued jobs went to the collector walking records.
Records hold no reference cycles, so after a full collection they can move to the permanent
generation (:func:`gc.freeze`), which the collector skips; they are still freed normally by
reference counting. Done after recovery and again whenever the records have doubled since, so
its cost (one full collection) is amortised over the records added.
"""

from __future__ import annotations

import gc

MIN_GROWTH = 1000  # records added before another freeze is worth a full collection


class RecordHeap:
    def __init__(self) -> None:
        self.frozen_at = 0  # how many records there were at the last freeze

    def grew(self, records: int) -> bool:
        """Freeze what is alive when ``records`` has doubled (and by ``MIN_GROWTH``) since the
        last freeze; True when it did."""
        if records < max(2 * self.frozen_at, self.frozen_at + MIN_GROWTH):
            return False
        gc.collect()  # only what is alive (no uncollected garbage) moves to the permanent generation
        gc.freeze()
        self.frozen_at = records
        return True
