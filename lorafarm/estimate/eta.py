"""When queued jobs should start and running ones end, from the estimates.

A list-scheduling replay: running jobs free their resources at their estimated ends; queued jobs,
in the order given (the policy's order of service), each start at the first moment enough is
free after the jobs before them started. Backfill can only make a job start earlier than this
(it never delays the head), so ``eta_start`` is a cautious figure. A job whose turn depends on a
job of unknown length gets no ETA (None), never a made-up one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..policy.pool import EPS


@dataclass(frozen=True, slots=True)
class EtaJob:
    job_id: str
    gpus: float
    cpus: float
    duration: float | None  # queued: estimated run time; running: estimated remaining time


def queue_etas(now: float, total_cpus: float, total_gpus: float, running: Sequence[EtaJob],
               queued: Sequence[EtaJob]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """(``eta_start`` per queued job, ``eta_end`` per running and queued job); None = unknown."""
    ends: dict[str, float | None] = {}
    heap: list[tuple[float, float, float]] = []  # (end time, gpus, cpus) of what holds resources
    free_g, free_c = total_gpus, total_cpus
    for j in running:
        end = math.inf if j.duration is None else now + j.duration
        ends[j.job_id] = None if math.isinf(end) else end
        heap.append((end, j.gpus, j.cpus))
        free_g -= j.gpus
        free_c -= j.cpus
    heapq.heapify(heap)
    starts: dict[str, float | None] = {}
    t = now
    for j in queued:
        while (j.gpus > free_g + EPS or j.cpus > free_c + EPS) and heap:
            end, g, c = heapq.heappop(heap)
            t = max(t, end)
            free_g += g
            free_c += c
        if math.isinf(t) or j.gpus > free_g + EPS or j.cpus > free_c + EPS:
            starts[j.job_id] = None
            ends[j.job_id] = None
            t = math.inf  # everything behind waits on a job of unknown length
            continue
        starts[j.job_id] = t
        end = math.inf if j.duration is None else t + j.duration
        ends[j.job_id] = None if math.isinf(end) else end
        free_g -= j.gpus
        free_c -= j.cpus
        heapq.heappush(heap, (end, j.gpus, j.cpus))
    return starts, ends
