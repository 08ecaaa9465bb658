"""The per-worker training recipe: one class that reads top to bottom.

``LoraRecipe(config, rank, world).run()`` = setup (resuming from the job's latest checkpoint,
if any) → train (with periodic eval and checkpoints) → export; or, when the runner asks to
stop, a checkpoint and nothing to export (preemption). Every rank runs it; rank 0 alone writes
the adapter and tells the job's driver what happens (:mod:`lorafarm.events`).

What it raises: :class:`~lorafarm.errors.AdapterError` when the trained adapter fails
verification, ``DataError`` for unusable data, ``TrainingError`` for a non-finite loss or a
checkpoint of another spec, anything from DeepSpeed/torch as is (the driver turns it into the
job's failure reason).

Loss normalisation: each optimizer step's loss is the mean over *all label tokens of the
global batch*, whatever the worker count or micro batch. Every rank knows the global batch's
label-token count from the tokenized table, scales its micro-batch token sums by it, and
DeepSpeed's 1/accumulation and rank averaging then yield exactly that mean. So the same spec
on 1, 2 or 4 workers takes the same optimizer steps.

Dropout: every dropout module draws its masks from (seed, step, the row's position in the
global batch) (:mod:`lorafarm.worker.dropout`), so the masks too are the same on any worker
count and micro batch, and a resume on another worker count is exact.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..events import Done, Event, GroupStarted, Preempted, Resumed, Step, WorkerError
from ..spec import JobSpec, resume_digest, resume_refusal, spec_digest, steps_per_epoch, total_steps
from .dropout import DropoutRows, seed_dropout_by_row

# A floor under each optimizer step's wall time, for tests only: the end-to-end tests kill a
# worker, a node or the scheduler, or preempt a job, while it trains, and a tiny model's CPU
# steps (~0.2 s) would end the job before the blow lands. 0 (unset) everywhere else.
STEP_FLOOR_S = float(os.environ.get("LORAFARM_TEST_STEP_FLOOR_S") or 0.0)


@dataclass
class WorkerConfig:
    """Everything a worker needs, picklable (sent through Ray Train's loop config)."""

    spec: JobSpec
    job_id: str
    adapter_uri: str
    job_uri: str
    train_rows_uri: str
    eval_rows_uri: str | None
    data_stats: dict[str, Any]
    dataset_fingerprint: str
    progress: Any = None  # a ray.util.queue.Queue of events, or None
    started_at: float = field(default_factory=time.time)
    env: dict[str, str] = field(default_factory=dict)  # forwarded from the submitter (storage access)
    control: Any = None  # an actor with ``stop_requested() -> bool`` (the job's runner), or None


class LoraRecipe:
    """LoRA fine-tuning of a frozen base under DeepSpeed ZeRO, one instance per rank."""

    def __init__(self, cfg: WorkerConfig, rank: int, world: int):
        self.cfg = cfg
        self.spec = cfg.spec
        self.rank, self.world = rank, world
        self.history: list[dict[str, Any]] = []  # Step.record() of every step so far
        self.start_step = 0
        self.resumed_from: int | None = None
        self.preempted_at: int | None = None
        self.skipped_steps: list[int] = []
        self.checkpoints: list[dict[str, Any]] = []
        self._last_poll = 0.0

    def run(self) -> dict[str, Any] | None:
        """Collective. The whole run on this rank; the published manifest on rank 0, else None."""
        self.setup()
        if self.resumed_from is not None:
            self.send(Resumed(step=self.resumed_from, world_size=self.world))
        self.train()
        if self.preempted_at is not None:
            self.barrier()
            self.send(Preempted(step=self.preempted_at))
            return None
        # no barrier after export: no rank has a collective left, and rank 0's verification, reload
        # check and upload are its own (a rank waiting for them there hung when the ranks' collective
        # counts differed at the end of a ZeRO-3 run, and would hang whenever rank 0's check fails)
        manifest = self.export()
        if manifest is not None:
            self.send(Done(manifest=manifest, history=tuple(self.history)))
        return manifest

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        from ..data.rows import RowSource
        from ..model import apply_lora, load_base, load_tokenizer, resolve_base, weights_digest
        from ..model.loss import TokenLoss
        from ..zero import build_engine, memory_report

        spec, t = self.spec, self.spec.training
        torch.manual_seed(t.seed + self.rank)
        self.precision = spec.resolved_precision()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        self.base_dir = resolve_base(spec.base_model)
        self.base_digest = weights_digest(self.base_dir)
        trust = spec.trust_remote_code
        self.tokenizer = load_tokenizer(self.base_dir, trust_remote_code=trust)
        base = load_base(self.base_dir, dtype=self.dtype, gradient_checkpointing=spec.zero.gradient_checkpointing,
                         trust_remote_code=trust)
        self.model = apply_lora(base, spec.lora, seed=t.seed)
        self.token_loss = TokenLoss(self.model)  # chunked over label tokens: never the full [seq, vocab] logits

        # rows are read from the sharded cache as the steps need them (bounded cache, prefetch): never all held
        self.train_rows = RowSource(self.cfg.train_rows_uri)
        self.eval_rows = RowSource(self.cfg.eval_rows_uri) if self.cfg.eval_rows_uri else None
        self.n_labels = self.train_rows.n_labels
        # dropout masks from (seed, step, row of the global batch), drawn for the longest row: the same on any
        # worker count and micro batch
        longest = self.train_rows.max_len or 1
        self.dropout_rows = DropoutRows(seed=t.seed, max_len=longest)
        seed_dropout_by_row(self.model, self.dropout_rows)
        self.total_steps = total_steps(t, steps_per_epoch(len(self.train_rows), t.global_batch_size))
        self.engine, self.lr_schedule = build_engine(self.model, spec, self.world, self.total_steps)
        leaked = memory_report(self.engine, self.model)["frozen_with_grad"]
        if leaked:  # a frozen base parameter would train: the adapter would not describe the change
            from ..errors import TrainingError

            raise TrainingError(f"{len(leaked)} base parameters would train (first: {leaked[0]}) — only LoRA "
                                "parameters may; this is a lorafarm bug, please report it")
        self.accum = self.engine.gradient_accumulation_steps()
        if self.world == 1 and spec.resolved_stage(1) == 0:
            # one rank, no ZeRO: DeepSpeed would still flatten every LoRA gradient, all-reduce it with itself
            # and copy it back after each backward; nothing to reduce, so skip that path
            self.engine.enable_backward_allreduce = False
        # packed rows: flash attention keeps examples apart by position ids alone (variable-length kernel);
        # SDPA/eager get the exact 4D block-diagonal mask (see lorafarm.data.collate)
        attn = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        self.packed_mask = "position_ids" if attn.startswith("flash_attention") else "4d"
        self.device = self.engine.device
        self.pad_id = self.tokenizer.pad_token_id or 0
        self._resume()

    def _resume(self) -> None:
        """Continue from the job's latest complete checkpoint, if it has one (a restarted
        worker group, a re-queued or preempted job): same global batches from the saved step."""
        from ..errors import StorageError, TrainingError
        from .checkpoints import list_checkpoints, read_checkpoint
        from .zero_state import load_checkpoint

        blobs = None
        for ref in reversed(list_checkpoints(self.cfg.job_uri)):  # newest first; a corrupt one falls back
            if ref.marker.get("resume_digest") != resume_digest(self.spec):
                raise TrainingError(f"{ref.uri}: {resume_refusal(_saved_spec(ref), self.spec)}")
            try:
                blobs = read_checkpoint(ref)  # every rank reads the same files: all fall back alike
                break
            except StorageError as e:
                self.send(WorkerError(reason=f"{e}; trying an older checkpoint"))
        if blobs is None:
            return
        restored = load_checkpoint(ref, blobs, self._rank_context())
        state = restored.state
        if state.get("base_weights_digest") != self.base_digest:
            raise TrainingError(f"{ref.uri}: made on other base weights than {self.spec.base_model} — resubmit as a "
                                "new job")
        self.start_step = self.resumed_from = restored.step
        self.history = list(state.get("history", []))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.first_eval = state.get("first_eval")
        self.last_eval = state.get("last_eval")
        self.skipped_steps = list(state.get("skipped_steps", []))
        self.train_seconds_before = float(state.get("train_seconds", 0.0))

    # ---------------------------------------------------------------- train
    def train(self) -> None:
        """Optimizer steps from ``start_step`` (0, or a checkpoint's step) to ``total_steps``;
        stops early, after a checkpoint, when the runner asks (preemption)."""
        t = self.spec.training
        self.engine.train()
        self.train_started = time.time()
        if self.resumed_from is None:
            self.tokens_seen = 0
            self.train_seconds_before = 0.0
            self.first_eval = self.evaluate() if self.eval_rows is not None else None
            self.last_eval = self.first_eval
        for step in range(self.start_step, self.total_steps):
            record, stop = self._optimizer_step(step)
            self.record_step(Step(**record))
            done = step + 1
            if stop and done < self.total_steps:
                self.save_checkpoint(done)
                self.preempted_at = done
                return
            if t.checkpoint_every_steps and done % t.checkpoint_every_steps == 0 and done < self.total_steps:
                self.save_checkpoint(done)
        if self.eval_rows is not None:
            self.last_eval = self.evaluate()
        self.final_train_loss = self.history[-1]["loss"] if self.history else None
        self.train_seconds = self.train_seconds_before + time.time() - self.train_started

    def _optimizer_step(self, step: int) -> tuple[dict[str, Any], bool]:
        """Step ``step`` (0-based) over this rank's share of its global batch: the step's
        record (:class:`~lorafarm.events.Step` fields), and whether the runner asked to stop."""
        from ..data import global_batch, micro_batches, worker_slice
        from ..errors import TrainingError
        from ..ops.accel import gpu_step_metrics
        from ..zero import memory_report

        t = self.spec.training
        t0 = time.perf_counter()
        lr = float(self.lr_schedule.get_last_lr()[0]) if self.lr_schedule else t.learning_rate
        batch = global_batch(step, len(self.train_rows), t.global_batch_size, t.seed)
        label_tokens = int(self.n_labels[batch].sum())
        mine = worker_slice(batch, self.rank, self.world)
        if step + 1 < self.total_steps:  # the next step's rows are read while this one computes
            upcoming = global_batch(step + 1, len(self.train_rows), t.global_batch_size, t.seed)
            self.train_rows.prefetch(worker_slice(upcoming, self.rank, self.world))
        offset = self.rank * len(mine)  # this rank's first row in the global batch
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = 0
        micros = micro_batches(mine, t.micro_batch_size)
        for i, micro in enumerate(micros):
            start = offset + i * t.micro_batch_size
            self.dropout_rows.set(step, range(start, start + len(micro)))
            inputs, n_tokens = self._collate(micro)
            tokens += n_tokens
            token_loss = self._token_loss_sum(inputs)
            loss_sum += token_loss.detach().double().cpu()
            scale = (self.world * self.accum) / max(label_tokens, 1)
            self.engine.backward(token_loss * scale)
            if i == len(micros) - 1:  # before the update: one all-reduce tells every rank all it needs
                total_loss, step_tokens, stop = self._all_sum(
                    [float(loss_sum), float(tokens), float(self.rank == 0 and self.stop_requested())])
                loss = total_loss / max(label_tokens, 1)
                if not math.isfinite(loss):
                    if t.on_nonfinite_loss == "stop":
                        raise TrainingError(
                            f"loss is {loss} at step {step + 1} (global batch rows {batch.min()}..{batch.max()}) — "
                            "lower training.learning_rate, check the data, or set training.on_nonfinite_loss=skip"
                            "; nothing was published")
                    self.skipped_steps.append(step + 1)
                    self._skip_next_update()
            self.engine.step()
        if STEP_FLOOR_S > 0:  # a test that acts mid-run paces its job (see STEP_FLOOR_S)
            time.sleep(max(0.0, STEP_FLOOR_S - (time.perf_counter() - t0)))
        step_tokens = int(step_tokens)
        self.tokens_seen += step_tokens
        dt = time.perf_counter() - t0
        record: dict[str, Any] = {
            "step": step + 1,
            "total_steps": self.total_steps,
            "loss": float(loss),
            "lr": lr,
            "tokens_per_s": step_tokens / dt if dt > 0 else 0.0,
            "step_time_s": dt,
            "tokens_seen": self.tokens_seen,
        }
        if step == self.start_step:  # the optimizer's state exists from its first step on
            self.memory = self._memory_totals(memory_report(self.engine, self.model))
        if step == 0:
            record.update({k: v for k, v in self.memory.items() if k != "frozen_with_grad"})
        if step + 1 in self.skipped_steps:
            record["skipped"] = True
        # on GPU only: gpu_memory_bytes (peak allocated, this rank) and mfu; absent on CPU
        record.update(gpu_step_metrics(self.device, self.memory["total_params"], record["tokens_per_s"], self.world))
        if t.eval_every_steps and (step + 1) % t.eval_every_steps == 0 and step + 1 < self.total_steps:
            record["eval_loss"] = self.last_eval = self.evaluate()
        return record, bool(stop)

    def record_step(self, step: Step) -> None:
        """After every optimizer step: into the history and to the driver. Not to
        ``ray.train.report``: Ray Train v2 keeps one pending result per worker and its controller
        takes it every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (2 s), so a report per step held every
        step shorter than 2 s until the next poll (the quickstart's 0.4 s steps took 2 s each); the
        job's events, checkpoints and history all travel through lorafarm's own channel."""
        self.history.append(step.record())
        self.send(step)

    def save_checkpoint(self, step: int) -> None:
        """Collective: the job's state after ``step`` optimizer steps, then older ones pruned."""
        from ..events import CheckpointSaved
        from .checkpoints import prune
        from .zero_state import save_checkpoint

        extra = {
            "resume_digest": resume_digest(self.spec),
            "spec": self.spec.model_dump(mode="json"),  # a refused resume names the changed fields
            "spec_digest": spec_digest(self.spec),
            "base_weights_digest": self.base_digest,
            "samples_seen": step * self.spec.training.global_batch_size,
            "tokens_seen": self.tokens_seen,
            "history": self.history,
            "first_eval": self.first_eval,
            "last_eval": self.last_eval,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds_before + time.time() - self.train_started,
        }
        marker = save_checkpoint(self.cfg.job_uri, step, self._rank_context(), extra)
        if marker is not None:
            prune(self.cfg.job_uri, self.spec.training.keep_last)
            saved = CheckpointSaved(step=step, bytes=marker["bytes"], seconds=marker["save_seconds"])
            self.checkpoints.append({"step": saved.step, "bytes": saved.bytes, "seconds": saved.seconds})
            self.send(saved)

    def stop_requested(self) -> bool:
        """Rank 0 asks the runner at most once a second whether to stop (preemption)."""
        control = self.cfg.control
        if control is None or time.monotonic() - self._last_poll < 1.0:
            return False
        self._last_poll = time.monotonic()
        try:
            import ray

            return bool(ray.get(control.stop_requested.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - a runner that cannot answer asks for nothing
            return False

    def _rank_context(self):
        from .zero_state import RankContext

        return RankContext(engine=self.engine, model=self.model, lr_schedule=self.lr_schedule, rank=self.rank,
                           world=self.world, barrier=self.barrier)

    def _skip_next_update(self) -> None:
        from ..zero import base_optimizer

        base_optimizer(self.engine).skip_next = True

    def _collate(self, indices) -> tuple[dict[str, torch.Tensor], int]:
        """A device batch for these row indices, and its count of real (non-pad) tokens."""
        from ..data import collate

        rows = self.train_rows.take(indices)
        n_tokens = sum(len(r["input_ids"]) for r in rows)
        batch = collate(rows, self.pad_id, self.spec.training.packing, dtype=self.dtype, minimal_mask=True,
                        packed_mask=self.packed_mask)
        return self._to_device(batch), n_tokens

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def _token_loss_sum(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum of per-token cross entropy over label tokens (labels are pre-shifted)."""
        return self.token_loss(self.engine, inputs)

    def _memory_totals(self, mine: dict[str, Any]) -> dict[str, Any]:
        opt_bytes, opt_numel = self._all_sum([float(mine["optimizer_state_bytes"]), float(mine["optimizer_numel"])])
        return {
            "trainable_params": mine["trainable_params"],
            "total_params": mine["total_params"],
            "optimizer_state_bytes": int(opt_bytes),
            "optimizer_numel": int(opt_numel),
            "frozen_with_grad": mine["frozen_with_grad"],
        }

    # ---------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-mean eval loss over the whole eval set, exact across ranks. Every rank runs
        the same number of forwards (ZeRO-3 gathers parameters collectively)."""
        from ..data import collate

        assert self.eval_rows is not None
        self.engine.eval()
        n, m = len(self.eval_rows), self.spec.training.micro_batch_size
        per_rank = math.ceil(n / self.world)
        mine = list(range(self.rank * per_rank, min(n, (self.rank + 1) * per_rank)))
        loss_sum, count = torch.zeros((), dtype=torch.float64), 0
        for i in range(math.ceil(per_rank / m)):
            idx = mine[i * m : (i + 1) * m]
            if idx:
                rows = self.eval_rows.take(idx)
            else:  # keep the collective forward count equal; contributes no tokens
                rows = self.eval_rows.take([0])
                rows[0]["labels"] = [-100] * len(rows[0]["labels"])
            inputs = self._to_device(collate(rows, self.pad_id, self.spec.training.packing, dtype=self.dtype))
            loss_sum += self._token_loss_sum(inputs).double().cpu()
            count += int((inputs["labels"] != -100).sum())
        self.engine.train()
        total, loss = self._all_sum([float(count), float(loss_sum)])
        return loss / max(total, 1.0)

    # ---------------------------------------------------------------- export
    def export(self) -> dict[str, Any] | None:
        """Collective: gather, verify, reload-check and publish. The manifest on rank 0."""
        from ..adapter.export import export_adapter
        from ..model import load_base

        def fresh_base():
            return load_base(self.base_dir, dtype=self.dtype, trust_remote_code=self.spec.trust_remote_code
                             ).to(self.device)

        return export_adapter(self.engine, self._probe_batch(), spec=self.spec, rank=self.rank,
                              steps_done=self.total_steps, fresh_base=fresh_base,
                              adapter_uri=self.cfg.adapter_uri, manifest=self._manifest)

    def _probe_batch(self) -> dict[str, torch.Tensor]:
        from ..data import collate

        rows = self.train_rows.take(range(min(2, len(self.train_rows))))
        b = self._to_device(collate(rows, self.pad_id, self.spec.training.packing, dtype=self.dtype))
        return {k: b[k] for k in ("input_ids", "attention_mask", "position_ids") if k in b}

    def _manifest(self) -> dict[str, Any]:
        from ..adapter.manifest import adapter_manifest

        return adapter_manifest(
            self.spec,
            job_id=self.cfg.job_id,
            base_weights_digest=self.base_digest,
            dataset_fingerprint=self.cfg.dataset_fingerprint,
            data_stats=self.cfg.data_stats,
            metrics={
                "steps": self.total_steps,
                "tokens_seen": self.tokens_seen,
                "final_train_loss": self.final_train_loss,
                "initial_eval_loss": self.first_eval,
                "final_eval_loss": self.last_eval,
                "trainable_params": self.memory["trainable_params"],
                "total_params": self.memory["total_params"],
                "optimizer_state_bytes": self.memory["optimizer_state_bytes"],
                "train_seconds": self.train_seconds,
                "wall_seconds": time.time() - self.cfg.started_at,
            },
            world_size=self.world,
            precision=self.precision,
            grad_accum_steps=self.accum,
        )

    # ---------------------------------------------------------------- between ranks and processes
    def send(self, event: Event) -> None:
        """An event to the job's driver (rank 0 only, except a :class:`~lorafarm.events.WorkerError`:
        every rank's own failure is named). Best effort, training goes on — except
        :class:`~lorafarm.events.Done`, whose loss would lose the adapter: that one raises."""
        send_event(self.cfg.progress, event, self.rank)

    def barrier(self) -> None:
        barrier(self.world)

    def _all_sum(self, values: list[float]) -> list[float]:
        return all_sum(values, self.world)


def send_event(progress, event: Event, rank: int) -> None:
    """``event`` to a job's driver queue (``progress``; None: nobody listens): rank 0's events, and
    any rank's own :class:`~lorafarm.events.WorkerError` prefixed with its rank. Best effort —
    except :class:`~lorafarm.events.Done`, whose loss would lose the adapter: that one raises."""
    if progress is None or (rank != 0 and not isinstance(event, WorkerError)):
        return
    if rank != 0:
        event = WorkerError(reason=f"rank {rank}: {event.reason}", retryable=event.retryable)
    try:
        progress.put_nowait(event)
    except Exception:  # noqa: BLE001
        if isinstance(event, Done):
            raise


def barrier(world: int) -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and world > 1:
        dist.barrier()


def all_sum(values: list[float], world: int) -> list[float]:
    """Element-wise float64 sums over ranks, in one collective."""
    import torch.distributed as dist

    v = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and world > 1:
        dist.all_reduce(v)
    return [float(x) for x in v]


def _saved_spec(ref) -> dict[str, Any] | None:
    """The spec a checkpoint was made with (its state.json), or None (older checkpoints)."""
    import json

    from ..storage import join, read_bytes
    from .zero_state import STATE

    try:
        return json.loads(read_bytes(join(ref.uri, STATE))).get("spec")
    except Exception:  # noqa: BLE001 - only the message loses the field names
        return None


def distributed_env_from_ray() -> tuple[int, int]:
    """Rank and world size from Ray Train; exported so DeepSpeed finds them."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("LOCAL_RANK", str(ctx.get_local_rank()))
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(ctx.get_local_world_size()))
    return rank, world


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: one recipe per rank.

    lorafarm's own errors (bad data, a non-finite loss, a failed verification) end the job:
    they are reported and the loop returns, since a retry would fail the same way. Anything
    else (a dead peer, an out-of-memory kill, a storage outage) propagates, so Ray Train
    restarts the worker group, which resumes from the latest checkpoint."""
    from ..errors import LorafarmError, StorageError

    cfg: WorkerConfig = config["worker"]
    for key, value in cfg.env.items():
        os.environ.setdefault(key, value)
    rank, world = distributed_env_from_ray()
    recipe = LoraRecipe(cfg, rank, world)
    recipe.send(GroupStarted(world_size=world, placement_group=_placement_group_id(), nodes=_rank_nodes(world)))
    try:
        recipe.run()
    except LorafarmError as e:
        recipe.send(WorkerError(reason=str(e)))
        if isinstance(e, StorageError):
            raise
    except Exception as e:
        recipe.send(WorkerError(reason=f"{type(e).__name__}: {e}", retryable=True))
        raise


def _rank_nodes(world: int) -> tuple[tuple[str, str], ...]:
    """(Ray node id, IP) of every rank, gathered over the worker group's process group (Ray
    Train sets it up before the loop), so the scheduler knows which nodes the job holds."""
    import ray
    import torch.distributed as dist

    me = (ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())
    if world == 1 or not dist.is_initialized():
        return (me,)
    out: list[Any] = [None] * world
    dist.all_gather_object(out, me)
    return tuple(tuple(x) for x in out)


def _placement_group_id() -> str | None:
    """The hex id of this worker group's placement group, so that the scheduler can remove it
    itself when it stops the job (Ray Train's own clean-up runs late on a loaded node)."""
    from ray.util.placement_group import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None
