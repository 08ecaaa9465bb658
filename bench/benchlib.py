"""Shared pieces of the CPU benchmarks: the workload (spec + tokenized rows), machine facts,
statistics, and the long-lived worker processes that let A/B repetitions interleave without
paying start-up inside the timed region.

Not a benchmark itself; ``bench/*.py`` import it (``sys.path`` holds ``bench/`` when a script
there runs).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The quickstart's training settings (jobs/quickstart.yaml): what a user runs first.
QUICKSTART = {
    "tenant": "bench",
    "name": "bench",
    "base_model": "tiny-llama",
    "dataset": {"uri": str(REPO / "jobs/data/pirate_chat.jsonl"), "format": "chat", "eval_fraction": 0.0},
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
    "training": {"max_steps": 1000, "global_batch_size": 16, "micro_batch_size": 4, "seq_len": 256,
                 "learning_rate": 2e-3, "warmup_steps": 0, "max_grad_norm": 1.0, "seed": 0,
                 "checkpoint_every_steps": 0},  # the step loop alone (checkpoint_bench times saves)
    "zero": {"stage": 2, "precision": "fp32"},
    "resources": {"workers": 1},
}


def spec_dict(**over: Any) -> dict[str, Any]:
    """The quickstart spec with dotted overrides, e.g. ``spec_dict(**{"zero.stage": 3})``."""
    import copy

    raw = copy.deepcopy(QUICKSTART)
    for dotted, value in over.items():
        node = raw
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def prepare_rows(raw: dict[str, Any], store_dir: str) -> str:
    """Tokenize the spec's dataset once (single process, no Ray) and return the rows' URI."""
    from lorafarm.data import prepare
    from lorafarm.model import resolve_base
    from lorafarm.spec import validate_spec
    from lorafarm.storage import Store

    spec = validate_spec(raw)
    return prepare(spec, str(resolve_base(spec.base_model)), Store.open(store_dir), parallel=False).train_uri


# ------------------------------------------------------------------ machine and statistics
def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "deepspeed", "transformers", "peft", "accelerate", "ray"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cores": os.cpu_count(), "gpu": None, **versions}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max-min)/median) of repeated measurements."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0, "rel_spread": float("nan")}
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values), "n": len(values),
            "rel_spread": (max(values) - min(values)) / med if med else float("nan")}


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout: what ``run_all.py`` collects."""
    print("BENCH " + json.dumps(record, default=float), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_extensions_dir() -> str:
    """A private JIT-extension cache for the bench's DeepSpeed processes. DeepSpeed builds its CPU
    shared-memory comm op at every ``init_distributed`` (training never calls it); in a cache that
    processes with a different ``ninja`` on PATH share, each switch rebuilds it (minutes on 2 busy
    cores). Seeded from the default cache when that holds a build."""
    import shutil

    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return os.environ["TORCH_EXTENSIONS_DIR"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    mine = cache / "lorafarm-bench" / "torch_extensions"
    if not mine.exists() and (cache / "torch_extensions").is_dir():
        shutil.copytree(cache / "torch_extensions", mine, symlinks=True, dirs_exist_ok=True)
    mine.mkdir(parents=True, exist_ok=True)
    return str(mine)


# ------------------------------------------------------------------ long-lived workers
class Gang:
    """``world`` processes running ``bench/step_worker.py`` for one contender. Each sets up
    once (model, engine, data) and then runs ``steps`` on command, so the parent can interleave
    contenders A B C A B C ... with start-up outside every timed region."""

    def __init__(self, contender: str, raw_spec: dict[str, Any], rows_uri: str, world: int = 1,
                 threads: int = 1, extra: dict[str, Any] | None = None):
        self.contender, self.world = contender, world
        port = free_port()
        cfg = {"contender": contender, "spec": raw_spec, "rows_uri": rows_uri, "world": world,
               "threads": threads, "port": port, **(extra or {})}
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TOKENIZERS_PARALLELISM": "false",
               "DS_ACCELERATOR": "cuda" if cfg.get("device") == "cuda" else "cpu", "PYTHONUNBUFFERED": "1",
               "TRANSFORMERS_VERBOSITY": "error", "TORCH_EXTENSIONS_DIR": torch_extensions_dir()}
        import tempfile

        # stderr goes to files: DeepSpeed and transformers log freely, and a full pipe would block
        self.logs = [tempfile.NamedTemporaryFile("w+", prefix=f"bench-{contender}-{r}-", suffix=".log", delete=False)  # noqa: SIM115
                     for r in range(world)]
        self.procs = [
            subprocess.Popen([sys.executable, str(BENCH / "step_worker.py"), json.dumps({**cfg, "rank": r})],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.logs[r], text=True,
                             env=env, cwd=str(REPO))
            for r in range(world)
        ]
        self.ready = [self._read(p) for p in self.procs]

    def _read(self, proc: subprocess.Popen) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                log = self.logs[self.procs.index(proc)]
                log.flush()
                err = Path(log.name).read_text(errors="replace")
                raise RuntimeError(f"{self.contender} worker exited ({proc.wait()}):\n{err[-4000:]}")
            if line.startswith("WORKER "):
                return json.loads(line[len("WORKER "):])

    def run(self, steps: int) -> dict[str, Any]:
        """Every rank runs ``steps`` steps; rank 0's figures (they agree up to the barrier)."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps({"cmd": "run", "steps": steps}) + "\n")
            p.stdin.flush()
        replies = [self._read(p) for p in self.procs]
        out = replies[0]
        out["cpu_s_all_ranks"] = sum(r["cpu_s"] for r in replies)
        return out

    def command(self, cmd: str, **kw: Any) -> list[dict[str, Any]]:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
            p.stdin.flush()
        return [self._read(p) for p in self.procs]

    def close(self) -> None:
        for p in self.procs:
            try:
                if p.stdin:
                    p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                    p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 30
        for p in self.procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()
            Path(log.name).unlink(missing_ok=True)

    def __enter__(self) -> Gang:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
