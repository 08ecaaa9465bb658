"""The co-training worker recipe: several jobs' adapters trained as one pack on one gang.

``PackRecipe(members, rank, world).run()`` is :class:`~lorafarm.worker.recipe.LoraRecipe` for a
pack: the frozen base is loaded once, every member's adapter is added to it
(:func:`~lorafarm.cotrain.new_pack`), and each pack step is one optimizer step of every member
still training. What each member keeps as its own, exactly as alone:

- its data order and global batches (``global_batch(its step, its rows, its batch, its seed)``),
  its worker slice and micro batches; a pack pass concatenates the live members' k-th micro
  batches (rows ordered by member, so routing takes slices) and runs the base once over them;
- its loss normalisation: each member's rows are weighted by ``world / its global batch's label
  tokens`` (the solo recipe's ``world × accum / label tokens``, less DeepSpeed's ``1 / accum``,
  which a pack does not apply: the engine runs with ``managed_gradient_accumulation: false`` and
  one ``engine.step()`` per pack step, however many passes the members' micro batches need);
- its optimizer group (AdamW moments, learning rate, weight decay), its warm-up + cosine
  schedule over its own steps, its clipping norm (:func:`~lorafarm.cotrain.member_optimizer`);
- its events, history and published PEFT adapter + manifest (its own job id), sent to its own
  driver; a member that finishes publishes and leaves, the others go on.

A member leaves at a step boundary when it is done, when its runner asks it to stop (it is
preempted: its own checkpoint is written, in the layout a job alone resumes from, and it may
resume alone or in another pack), or when its loss is not finite under ``on_nonfinite_loss: stop``
(it fails alone; under ``skip`` its group skips that update). A member that has left takes no
more updates (its group is inactive), so the others' steps are unchanged. Members checkpoint
every ``training.checkpoint_every_steps`` of their own steps, and a member whose job has a
checkpoint resumes from it when the pack starts.

Not yet: joining a running pack, ZeRO-3, exact dropout > 0 (masks are drawn by the pack, not from
the member's (seed, step, row) as alone).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..events import Done, GroupStarted, Preempted, Resumed, Step, WorkerError
from ..spec import steps_per_epoch, total_steps
from ..worker.recipe import STEP_FLOOR_S, WorkerConfig, all_sum, barrier, send_event
from .compat import pack_problems


@dataclass
class Member:
    """One job of the pack, as its worker sees it."""

    cfg: WorkerConfig
    name: str  # its adapter's name inside the pack ("m0", ...): never its job id
    group: int  # its optimizer param group
    rows: Any = None
    eval_rows: Any = None
    total_steps: int = 0
    done: int = 0
    state: str = "training"  # training | succeeded | preempted | failed
    reason: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    tokens_seen: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    first_eval: float | None = None
    last_eval: float | None = None
    manifest: dict[str, Any] | None = None
    lr_lambda: Any = None
    last_poll: float = 0.0
    resumed_from: int | None = None
    train_seconds_before: float = 0.0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    @property
    def spec(self):
        return self.cfg.spec


class PackRecipe:
    """Co-training of the members' adapters on one frozen base, one instance per rank."""

    def __init__(self, members: list[WorkerConfig], rank: int, world: int):
        problems = pack_problems([m.spec for m in members])
        if problems:
            raise ValueError("these jobs cannot train as one pack: " + "; ".join(problems))
        self.members = [Member(cfg=c, name=f"m{i}", group=i) for i, c in enumerate(members)]
        self.rank, self.world = rank, world
        self.train_started = time.time()
        self.group: dict[str, Any] = {}  # on Ray: GroupStarted's placement_group and nodes (launch.py)

    # ---------------------------------------------------------------- run
    def run(self) -> dict[str, dict[str, Any]]:
        """Collective. Trains every member to its end; returns ``{job id: {"state", "reason",
        "steps", "manifest"}}`` (the manifest on rank 0, for members that published)."""
        self.setup()
        for m in self.members:
            self.send(m, GroupStarted(world_size=self.world, pack_members=len(self.members), **self.group))
            if m.state != "training":
                continue
            if m.resumed_from is not None:
                self.send(m, Resumed(step=m.resumed_from, world_size=self.world))
            elif m.eval_rows is not None:
                m.first_eval = m.last_eval = self.evaluate(m)
        self.engine.train()
        self.train_started = time.time()
        while any(m.state == "training" for m in self.members):
            self.pack_step()
        return {m.cfg.job_id: {"state": m.state, "reason": m.reason, "steps": m.done, "manifest": m.manifest}
                for m in self.members}

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        import deepspeed

        from ..data.rows import RowSource
        from ..model import load_base, load_tokenizer, resolve_base, weights_digest
        from ..model.loss import TokenLoss
        from ..zero.config import ds_config, lr_lambda
        from ..zero.engine import skip_cpu_shm_comm_op
        from .attention import use_pack_attention
        from .optim import member_optimizer
        from .routing import member_parameters, new_pack

        lead = self.members[0].spec
        torch.manual_seed(lead.training.seed + self.rank)
        self.precision = lead.resolved_precision()
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)
        self.base_dir = resolve_base(lead.base_model)
        self.base_digest = weights_digest(self.base_dir)
        self.tokenizer = load_tokenizer(self.base_dir, trust_remote_code=lead.trust_remote_code)
        self.pad_id = self.tokenizer.pad_token_id or 0
        base = load_base(self.base_dir, dtype=self.dtype, gradient_checkpointing=lead.zero.gradient_checkpointing,
                         trust_remote_code=lead.trust_remote_code)
        self.model = new_pack(base, {m.name: (m.spec.lora, m.spec.training.seed) for m in self.members})
        self.token_loss = TokenLoss(self.model)
        groups = []
        for m in self.members:
            t = m.spec.training
            m.rows = RowSource(m.cfg.train_rows_uri)
            m.eval_rows = RowSource(m.cfg.eval_rows_uri) if m.cfg.eval_rows_uri else None
            m.total_steps = total_steps(t, steps_per_epoch(len(m.rows), t.global_batch_size))
            m.lr_lambda = lr_lambda(t.warmup_steps, m.total_steps, t.min_lr_ratio)
            groups.append({"params": member_parameters(self.model, m.name), "lr": t.learning_rate,
                           "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm})
        stage = lead.resolved_stage(self.world)
        self.optimizer = member_optimizer(groups, partitioned=stage >= 1)
        # one engine step per pack step, however many backward passes it took: the caller owns the boundary
        config = {**ds_config(lead, self.world, 1), "train_batch_size": self.world, "train_micro_batch_size_per_gpu": 1,
                  "gradient_accumulation_steps": 1, "gradient_clipping": 0.0, "managed_gradient_accumulation": False}
        skip_cpu_shm_comm_op()
        self.engine, _, _, _ = deepspeed.initialize(model=self.model, optimizer=self.optimizer, config=config,
                                                    dist_init_required=False)
        if self.world == 1 and stage == 0:  # nothing to reduce with one rank (as LoraRecipe)
            self.engine.enable_backward_allreduce = False
        attn = getattr(self.model.config, "_attn_implementation", None) or "sdpa"
        use_pack_attention(self.model)  # SDPA per member segment, as each member's own micro batch
        self.packed_mask = "position_ids" if attn.startswith("flash_attention") else "4d"
        self.device = self.engine.device
        from ..errors import LorafarmError

        for m in self.members:
            try:
                self._resume(m)
            except LorafarmError as e:  # its checkpoint is of another spec or base: it fails alone
                m.state, m.reason = "failed", str(e)
                self.send(m, WorkerError(reason=m.reason))

    def _resume(self, m: Member) -> None:
        """Continue member ``m`` from its job's latest complete checkpoint, if it has one (made
        alone or in a pack: the layout is the same), exactly where it stopped."""
        from ..errors import StorageError, TrainingError
        from ..spec import resume_digest
        from ..worker.checkpoints import list_checkpoints, read_checkpoint
        from ..worker.zero_state import OPTIMIZER, STATE, WEIGHTS, load_tensors
        from .state import load_member_state

        for ref in reversed(list_checkpoints(m.cfg.job_uri)):
            if ref.marker.get("resume_digest") != resume_digest(m.spec):
                raise TrainingError(f"{ref.uri}: made for another spec of this job — resubmit as a new job")
            try:
                blobs = read_checkpoint(ref)
            except StorageError as e:
                self.send(m, WorkerError(reason=f"{e}; trying an older checkpoint"))
                continue
            import json

            state = json.loads(blobs[STATE])
            if state.get("base_weights_digest") != self.base_digest:
                raise TrainingError(f"{ref.uri}: made on other base weights than {m.spec.base_model} — resubmit as "
                                    "a new job")
            load_member_state(self.engine, self.model, m.name, m.group, load_tensors(blobs[WEIGHTS]),
                              load_tensors(blobs[OPTIMIZER]), state["optimizer_step"])
            m.done = m.resumed_from = int(state["step"])
            m.history = list(state.get("history", []))
            m.tokens_seen = int(state.get("tokens_seen", 0))
            m.first_eval, m.last_eval = state.get("first_eval"), state.get("last_eval")
            m.skipped_steps = list(state.get("skipped_steps", []))
            m.train_seconds_before = float(state.get("train_seconds", 0.0))
            return

    def save_checkpoint(self, m: Member, step: int) -> None:
        """Collective: member ``m``'s own state after ``step`` of its steps, in the layout a job
        alone resumes from (:mod:`lorafarm.cotrain.state`); older ones pruned."""
        from ..events import CheckpointSaved
        from ..spec import resume_digest, spec_digest
        from ..worker.checkpoints import prune
        from ..worker.zero_state import RankContext, write_checkpoint
        from .state import member_training_state, schedule_state

        t0 = time.perf_counter()
        weights, moments, opt_step = member_training_state(self.engine, self.model, m.name, m.group)
        extra = {
            "resume_digest": resume_digest(m.spec), "spec": m.spec.model_dump(mode="json"),
            "spec_digest": spec_digest(m.spec), "base_weights_digest": self.base_digest,
            "samples_seen": step * m.spec.training.global_batch_size, "tokens_seen": m.tokens_seen,
            "history": m.history, "first_eval": m.first_eval, "last_eval": m.last_eval,
            "skipped_steps": m.skipped_steps,
            "train_seconds": m.train_seconds_before + time.time() - self.train_started,
        }
        ctx = RankContext(engine=self.engine, model=self.model, lr_schedule=None, rank=self.rank, world=self.world,
                          barrier=self.barrier)
        marker = write_checkpoint(m.cfg.job_uri, step, ctx, weights, moments, opt_step,
                                  schedule_state(m.spec.training.learning_rate, m.lr_lambda, step), extra, t0)
        if marker is not None:
            prune(m.cfg.job_uri, m.spec.training.keep_last)
            m.checkpoints.append({"step": step, "bytes": marker["bytes"], "seconds": marker["save_seconds"]})
            self.send(m, CheckpointSaved(step=step, bytes=marker["bytes"], seconds=marker["save_seconds"]))

    # ---------------------------------------------------------------- train
    def pack_step(self) -> None:
        """One optimizer step of every member still training, then those that are done leave."""
        from ..data import global_batch, micro_batches, worker_slice
        from ..errors import TrainingError
        from .attention import member_segments, segments_of
        from .routing import routed

        t0 = time.perf_counter()
        live = [m for m in self.members if m.state == "training"]
        plan = {}  # member -> (its global batch's label tokens, its micro batches on this rank, first row offset)
        for m in live:
            t = m.spec.training
            batch = global_batch(m.done, len(m.rows), t.global_batch_size, t.seed)
            mine = worker_slice(batch, self.rank, self.world)
            plan[m.name] = (int(m.rows.n_labels[batch].sum()), micro_batches(mine, t.micro_batch_size))
            if m.done + 1 < m.total_steps:
                upcoming = global_batch(m.done + 1, len(m.rows), t.global_batch_size, t.seed)
                m.rows.prefetch(worker_slice(upcoming, self.rank, self.world))
        for m in self.members:  # this step's learning rates; members that left take no update
            g = self.optimizer.param_groups[m.group]
            g["active"] = m.state == "training"
            g["lr"] = m.spec.training.learning_rate * m.lr_lambda(m.done) if g["active"] else 0.0
        lrs = {m.name: float(self.optimizer.param_groups[m.group]["lr"]) for m in live}
        loss_sums = {m.name: torch.zeros((), dtype=torch.float64) for m in live}
        tokens = {m.name: 0 for m in live}
        passes = max(len(micros) for _, micros in plan.values())
        for k in range(passes):
            rows, names, weights = [], [], []
            for m in live:
                label_tokens, micros = plan[m.name]
                if k < len(micros):
                    part = m.rows.take(micros[k])
                    rows += part
                    names += [m.name] * len(part)
                    weights += [self.world / max(label_tokens, 1)] * len(part)
                    tokens[m.name] += sum(len(r["input_ids"]) for r in part)
            packing = live[0].spec.training.packing
            inputs = self._collate(rows, packing)
            segments = segments_of(names, [len(r["input_ids"]) for r in rows], packing)
            # backward inside too: gradient checkpointing runs the layers' forwards again there
            with routed(self.model, names), member_segments(segments):
                per_row = self.token_loss(self.engine, inputs, per_row=True)
                w = torch.tensor(weights, dtype=per_row.dtype, device=per_row.device)
                self.engine.backward((per_row * w).sum())
            detached = per_row.detach().double().cpu()
            for i, name in enumerate(names):
                loss_sums[name] += detached[i]
        # one collective for every member's loss and tokens, and rank 0's stop requests
        values = []
        for m in live:
            values += [float(loss_sums[m.name]), float(tokens[m.name]), float(self.rank == 0 and self.stop_requested(m))]
        totals = self._all_sum(values)
        outcome = {}
        for i, m in enumerate(live):
            label_tokens = plan[m.name][0]
            loss, step_tokens, stop = totals[3 * i] / max(label_tokens, 1), int(totals[3 * i + 1]), totals[3 * i + 2]
            if not math.isfinite(loss):
                if m.spec.training.on_nonfinite_loss == "stop":
                    m.state, m.reason = "failed", str(TrainingError(
                        f"loss is {loss} at step {m.done + 1} — lower training.learning_rate, check the data, or set "
                        "training.on_nonfinite_loss=skip; nothing was published"))
                    self.send(m, WorkerError(reason=m.reason))
                m.skipped_steps.append(m.done + 1)
                self.optimizer.param_groups[m.group]["active"] = False
            outcome[m.name] = (loss, step_tokens, bool(stop))
        self.engine.step()
        if STEP_FLOOR_S > 0:  # a test that acts mid-run paces its pack (see worker.recipe.STEP_FLOOR_S)
            time.sleep(max(0.0, STEP_FLOOR_S - (time.perf_counter() - t0)))
        dt = time.perf_counter() - t0
        for m in live:
            if m.state != "training":
                continue
            loss, step_tokens, stop = outcome[m.name]
            m.done += 1
            m.tokens_seen += step_tokens
            record = {"step": m.done, "total_steps": m.total_steps, "loss": loss, "lr": lrs[m.name],
                      "tokens_per_s": step_tokens / dt if dt > 0 else 0.0, "step_time_s": dt,
                      "tokens_seen": m.tokens_seen}
            if m.done in m.skipped_steps:
                record["skipped"] = True
            t = m.spec.training
            if t.eval_every_steps and m.done % t.eval_every_steps == 0 and m.done < m.total_steps \
                    and m.eval_rows is not None:
                record["eval_loss"] = m.last_eval = self.evaluate(m)
            step = Step(**record)
            m.history.append(step.record())
            self.send(m, step)
            if m.done >= m.total_steps:
                self.finish(m)
            elif stop:  # preempted at this step boundary: its checkpoint, then it leaves; the others go on
                self.save_checkpoint(m, m.done)
                m.state, m.reason = "preempted", f"preempted at step {m.done} of {m.total_steps} (co-trained)"
                self.send(m, Preempted(step=m.done))
            elif t.checkpoint_every_steps and m.done % t.checkpoint_every_steps == 0:
                self.save_checkpoint(m, m.done)

    def stop_requested(self, m: Member) -> bool:
        """Rank 0 asks the member's runner at most once a second whether to stop."""
        control = m.cfg.control
        if control is None:
            return False
        ask = control.stop_requested
        if not hasattr(ask, "remote"):  # an in-process control (tests, the benchmark): asked every step
            return bool(ask())
        if time.monotonic() - m.last_poll < 1.0:
            return False
        m.last_poll = time.monotonic()
        try:
            import ray

            return bool(ray.get(ask.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - a runner that cannot answer asks for nothing
            return False

    def _collate(self, rows: list[dict], packing: bool) -> dict[str, torch.Tensor]:
        from ..data import collate

        batch = collate(rows, self.pad_id, packing, dtype=self.dtype, minimal_mask=True,
                        packed_mask=self.packed_mask)
        return {k: v.to(self.device) for k, v in batch.items()}

    # ---------------------------------------------------------------- eval and export
    @torch.no_grad()
    def evaluate(self, m: Member) -> float:
        """The member's token-mean eval loss over its whole eval set, its rows through its adapter."""
        from ..data import collate
        from .routing import routed

        self.engine.eval()
        n, size = len(m.eval_rows), m.spec.training.micro_batch_size
        per_rank = math.ceil(n / self.world)
        mine = list(range(self.rank * per_rank, min(n, (self.rank + 1) * per_rank)))
        loss_sum, count = 0.0, 0
        for i in range(0, len(mine), size):
            rows = m.eval_rows.take(mine[i:i + size])
            batch = collate(rows, self.pad_id, m.spec.training.packing, dtype=self.dtype)
            inputs = {k: v.to(self.device) for k, v in batch.items()}
            with routed(self.model, [m.name] * len(rows)):
                loss_sum += float(self.token_loss(self.engine, inputs))
            count += int((inputs["labels"] != -100).sum())
        self.engine.train()
        total, loss = self._all_sum([float(count), loss_sum])
        return loss / max(total, 1.0)

    def finish(self, m: Member) -> None:
        """The member's last step: its final eval, then (rank 0) its adapter checked, reloaded
        alone by PEFT and published with its own manifest."""
        from ..errors import LorafarmError
        from .export import export_member

        if m.eval_rows is not None:
            m.last_eval = self.evaluate(m)
        m.state = "succeeded"
        if self.rank != 0:
            return
        try:
            m.manifest = export_member(self, m)
        except LorafarmError as e:  # its adapter failed its checks: it fails alone
            m.state, m.reason = "failed", str(e)
            self.send(m, WorkerError(reason=m.reason))
            return
        self.send(m, Done(manifest=m.manifest, history=tuple(m.history)))

    # ---------------------------------------------------------------- between ranks and processes
    def send(self, m: Member, event) -> None:
        """An event to the member's own driver, as a job alone sends it (rank 0's, and any
        rank's own failure)."""
        send_event(m.cfg.progress, event, self.rank)

    def barrier(self) -> None:
        barrier(self.world)

    def _all_sum(self, values: list[float]) -> list[float]:
        return all_sum(values, self.world)
