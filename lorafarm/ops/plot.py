"""``lorafarm plot``: train and eval loss curves and tokens/s over steps, from a job's history.

Draws on a bare ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state, no display),
so it is safe in servers and threads.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .history import JobHistory


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def plot_history(history: JobHistory, out: str | Path, *, dpi: int = 110):
    """Write a PNG with two panels (loss: train line + eval points; throughput: tokens/s) and
    return the ``Figure`` (its axes' lines carry labels ``train loss``, ``eval loss``, ``tokens/s``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = history.steps
    fig = Figure(figsize=(8, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_tps = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))

    train = [(r["step"], r["loss"]) for r in steps if "loss" in r]
    ax_loss.plot([s for s, _ in train], [v if _finite(v) else math.nan for _, v in train],
                 label="train loss", color="tab:blue", linewidth=1.4)
    evals = [(r["step"], r["eval_loss"]) for r in steps if _finite(r.get("eval_loss"))]
    if _finite(history.initial_eval_loss):
        evals.insert(0, (0, history.initial_eval_loss))
    if evals:
        ax_loss.plot([s for s, _ in evals], [v for _, v in evals], label="eval loss", color="tab:orange",
                     marker="o", markersize=4, linewidth=1.2)
    if any(not _finite(v) for _, v in train):
        ax_loss.text(0.01, 0.02, "non-finite train loss on some steps (not drawn)", color="tab:red",
                     transform=ax_loss.transAxes, fontsize=8)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    total = max((r.get("total_steps", 0) for r in steps), default=0)
    done = steps[-1]["step"] if steps else 0
    ax_loss.set_title(f"{history.job_id} — step {done}/{total}" if total else history.job_id, fontsize=10)

    tps = [(r["step"], r["tokens_per_s"]) for r in steps if _finite(r.get("tokens_per_s"))]
    ax_tps.plot([s for s, _ in tps], [v for _, v in tps], label="tokens/s", color="tab:green", linewidth=1.2)
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_xlabel("step")
    ax_tps.grid(alpha=0.3)
    ax_tps.set_ylim(bottom=0)
    ax_tps.legend(loc="lower right")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    return fig


def lines_by_label(fig) -> dict[str, tuple[list[float], list[float]]]:
    """``{label: (xs, ys)}`` of every labelled line in the figure (for tests and scripts)."""
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            label = line.get_label()
            if not label.startswith("_"):
                out[label] = ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
    return out
