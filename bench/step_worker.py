"""One rank of one contender, driven over stdin by :class:`benchlib.Gang` (not run by hand).

    python bench/step_worker.py '<json config>'

Contenders, all on the same PEFT-wrapped tiny-llama (same LoRA config and init seed), the same
tokenized rows in the same order (``lorafarm.data.global_batch``), the same micro batches
(``lorafarm.data.collate``), micro batch, accumulation, optimizer settings and threads:

* ``lorafarm`` - :class:`lorafarm.worker.recipe.LoraRecipe` exactly as a job runs it:
  ``setup()`` (DeepSpeed engine from the spec) once, then ``train()`` for N steps per command.
* ``hf_trainer`` - ``transformers.Trainer`` (sequential sampler so the batches match) with
  the model's own loss.
* ``bare`` - a plain PyTorch loop: forward, ``loss / accum`` backward, clip, AdamW, schedule.

Each run of N steps times steps 2..N from outside the loop (the first step of every run carries
one-off work in every contender: the recipe's memory report, the Trainer's optimizer creation).
Commands: ``run`` (steps), ``memory`` (what the optimizer holds; lorafarm only), ``quit``.
Replies are single ``WORKER {json}`` lines on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reply(obj: dict[str, Any]) -> None:
    sys.stdout.write("WORKER " + json.dumps(obj, default=float) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ collective byte counter
COLLECTIVES = ("all_reduce", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_gather",
               "all_gather_into_tensor", "broadcast", "all_to_all_single", "all_reduce_coalesced")


class CommCounter:
    """Wraps ``torch.distributed`` collectives (DeepSpeed's comm backend calls them through the
    module attribute) and sums the payload bytes each rank hands in, by operation."""

    def __init__(self) -> None:
        import torch
        import torch.distributed as dist

        self.bytes: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)

        def size(x: Any) -> int:
            if torch.is_tensor(x):
                return x.numel() * x.element_size()
            if isinstance(x, list | tuple):
                return sum(size(t) for t in x)
            return 0

        for name in COLLECTIVES:
            fn = getattr(dist, name, None)
            if fn is None:
                continue

            def wrapped(*args, _fn=fn, _name=name, **kwargs):
                # the payload: the input of reduce-scatter / all-gather, the tensor otherwise
                key = {"reduce_scatter_tensor": "input", "all_gather_into_tensor": "input_tensor",
                       "reduce_scatter": "input_list", "all_gather": "tensor",
                       "all_to_all_single": "input"}.get(_name, "tensor")
                if key in kwargs:
                    payload = kwargs[key]
                elif _name in ("reduce_scatter_tensor", "all_gather_into_tensor", "reduce_scatter",
                               "all_gather", "all_to_all_single"):
                    payload = args[1] if len(args) > 1 else None
                else:
                    payload = args[0] if args else kwargs.get("tensors")
                self.bytes[_name] += size(payload)
                self.calls[_name] += 1
                return _fn(*args, **kwargs)

            setattr(dist, name, wrapped)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        return dict(self.bytes), dict(self.calls)


# ------------------------------------------------------------------ shared data
class Rows:
    """The tokenized rows and the batch order every contender follows."""

    def __init__(self, rows_uri: str, spec, world: int, rank: int):
        from lorafarm.data import load_rows

        self.table = load_rows(rows_uri)
        self.spec, self.world, self.rank = spec, world, rank
        self.lengths = [len(x) for x in self.table.column("input_ids").to_pylist()]

    def step_indices(self, step: int):
        from lorafarm.data import global_batch

        t = self.spec.training
        return global_batch(step, len(self.table), t.global_batch_size, t.seed)

    def step_tokens(self, step: int) -> int:
        """Real (non-pad) tokens of one global batch, all ranks."""
        return int(sum(self.lengths[int(i)] for i in self.step_indices(step)))

    def micro_batches(self, step: int):
        from lorafarm.data import micro_batches, worker_slice

        mine = worker_slice(self.step_indices(step), self.rank, self.world)
        return micro_batches(mine, self.spec.training.micro_batch_size)

    def rows(self, indices) -> list[dict[str, Any]]:
        return self.table.take([int(i) for i in indices]).to_pylist()


def hf_batch(rows: list[dict[str, Any]], pad_id: int, packing: bool) -> dict[str, Any]:
    """lorafarm's collate, with labels moved back to Hugging Face's unshifted convention (the
    model shifts them itself), so the same tokens are predicted."""
    import torch

    from lorafarm.data import collate

    flash = os.environ.get("LORAFARM_ATTN_IMPLEMENTATION", "").startswith("flash_attention")
    b = {k: v.to(DEVICE) for k, v in collate(rows, pad_id, packing, packed_mask="position_ids" if flash else "4d").items()}
    labels = torch.full_like(b["labels"], -100)
    labels[:, 1:] = b["labels"][:, :-1]
    b["labels"] = labels
    return b


DEVICE = "cpu"  # "cuda" when the config says so (bench/gpu/gpu_bench.py)


def dtype_of(spec):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.resolved_precision(), torch.float32)


def build_peft_model(spec):
    from lorafarm.model import apply_lora, load_base, resolve_base

    base = load_base(resolve_base(spec.base_model), dtype=dtype_of(spec),
                     gradient_checkpointing=spec.zero.gradient_checkpointing)
    return apply_lora(base, spec.lora, seed=spec.training.seed).to(DEVICE)


# ------------------------------------------------------------------ contenders
class Timer:
    """Wall and CPU clocks at the end of each step; figures over steps 2..N."""

    def __init__(self, on_first=None) -> None:
        self.marks: list[tuple[float, float]] = []
        self.on_first = on_first

    def mark(self) -> None:
        if DEVICE == "cuda":
            import torch

            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), time.process_time()))
        if len(self.marks) == 1 and self.on_first:
            self.on_first()

    def result(self, tokens_per_step: list[int]) -> dict[str, Any]:
        n = len(self.marks)
        if n < 2:
            raise RuntimeError("need at least 2 steps per run")
        wall = self.marks[-1][0] - self.marks[0][0]
        cpu = self.marks[-1][1] - self.marks[0][1]
        tokens = sum(tokens_per_step[1:n])
        steps = [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return {"steps": n - 1, "tokens": tokens, "wall_s": wall, "cpu_s": cpu,
                "tokens_per_s": tokens / wall, "step_s": steps}


class LorafarmContender:
    def __init__(self, cfg: dict[str, Any], spec, rows: Rows):
        from lorafarm.events import Step
        from lorafarm.worker.recipe import LoraRecipe, WorkerConfig

        wc = WorkerConfig(spec=spec, job_id="bench", adapter_uri="unused", job_uri="unused",
                          train_rows_uri=cfg["rows_uri"], eval_rows_uri=None, data_stats={},
                          dataset_fingerprint="bench")
        self.rows = rows
        self.recipe = LoraRecipe(wc, cfg["rank"], cfg["world"])
        self.recipe.setup()
        self.timer: Timer | None = None
        record_step = self.recipe.record_step

        def timed_record_step(step: Step) -> None:
            record_step(step)
            if self.timer is not None:
                self.timer.mark()

        self.recipe.record_step = timed_record_step  # the recipe's own per-step hook, called after every step

    def run(self, steps: int, timer: Timer) -> None:
        self.timer = timer
        self.recipe.total_steps = steps
        self.recipe.history.clear()
        self.recipe.train()
        self.timer = None

    def memory(self) -> dict[str, Any]:
        return memory_facts(self.recipe)


class BareContender:
    def __init__(self, cfg: dict[str, Any], spec, rows: Rows):
        import torch

        from lorafarm.zero.config import lr_lambda

        self.spec, self.rows = spec, rows
        t = spec.training
        self.model = build_peft_model(spec)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=t.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(t.warmup_steps, t.max_steps or 1000,
                                                                          t.min_lr_ratio))
        self.accum = spec.grad_accum_steps(1)
        self.losses: list[float] = []

    def run(self, steps: int, timer: Timer) -> None:
        import torch

        t = self.spec.training
        for step in range(steps):
            total = 0.0
            for micro in self.rows.micro_batches(step):
                b = hf_batch(self.rows.rows(micro), 0, t.packing)
                loss = self.model(**b, use_cache=False).loss / self.accum
                loss.backward()
                total += float(loss.detach())
            if t.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.losses.append(total)
            timer.mark()


class HFTrainerContender:
    def __init__(self, cfg: dict[str, Any], spec, rows: Rows):
        import torch
        from transformers import Trainer, TrainerCallback, TrainingArguments

        self.spec, self.rows = spec, rows
        t = spec.training
        model = build_peft_model(spec)
        owner = self

        class Marks(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if owner.timer is not None:
                    owner.timer.mark()

        class Ordered(torch.utils.data.Dataset):
            """Rows in lorafarm's global-batch order, so the micro batches are the same ones."""

            def __init__(self) -> None:
                self.order: list[int] = []

            def __len__(self) -> int:
                return len(self.order)

            def __getitem__(self, i: int) -> dict[str, Any]:
                return {"row": int(self.order[i])}

        self.data = Ordered()
        pad = 0
        packing = t.packing

        def collator(items: list[dict[str, Any]]) -> dict[str, Any]:
            return hf_batch(rows.rows([it["row"] for it in items]), pad, packing)

        self.args = TrainingArguments(
            output_dir=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench-hf-{os.getpid()}"),
            per_device_train_batch_size=t.micro_batch_size,
            gradient_accumulation_steps=spec.grad_accum_steps(rows.world),
            learning_rate=t.learning_rate, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="cosine", warmup_steps=0,
            max_steps=2, logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none",
            use_cpu=DEVICE == "cpu", bf16=spec.resolved_precision() == "bf16",
            gradient_checkpointing=spec.zero.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False}, dataloader_num_workers=0, train_sampling_strategy="sequential",
            remove_unused_columns=False, disable_tqdm=True, seed=t.seed,
            **({"ddp_backend": "gloo"} if rows.world > 1 and DEVICE == "cpu" else {}),
        )
        self.trainer = Trainer(model=model, args=self.args, train_dataset=self.data, data_collator=collator,
                               callbacks=[Marks()])
        self.timer: Timer | None = None

    def run(self, steps: int, timer: Timer) -> None:
        # the global batches in order; under DDP the Trainer's data loader deals micro batches out to the ranks
        self.data.order = [int(i) for s in range(steps) for i in self.rows.step_indices(s)]
        self.trainer.args.max_steps = steps
        self.timer = timer
        self.trainer.train()
        self.timer = None


CONTENDERS = {"lorafarm": LorafarmContender, "bare": BareContender, "hf_trainer": HFTrainerContender}


# ------------------------------------------------------------------ memory facts (lorafarm)
def memory_facts(recipe) -> dict[str, Any]:
    """What this rank's optimizer holds, and the proof that the frozen base holds nothing."""
    import torch

    from lorafarm.zero import base_optimizer, memory_report

    engine, model = recipe.engine, recipe.model
    rep = memory_report(engine, model)
    opt = engine.optimizer
    lora_ids = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    # parameters the (ZeRO) optimizer manages: its low-precision groups, else the base optimizer's
    managed: list = []
    for attr in ("bit16_groups", "fp16_groups"):
        groups = getattr(opt, attr, None)
        if groups:
            managed = [p for g in groups for p in g]
            break
    if not managed:
        managed = [p for g in base_optimizer(engine).param_groups for p in g["params"]]
    managed_ids = {id(p) for p in managed}
    # fp32 masters held by ZeRO for bf16/fp16 (stage 1/2: single_partition_of_fp32_groups, stage 3:
    # fp32_partitioned_groups_flat): their total size must be this rank's share of the LoRA params
    masters = 0
    for attr in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition"):
        groups = getattr(opt, attr, None)
        if groups:
            masters = sum(t.numel() for t in groups if torch.is_tensor(t))
            break
    frozen = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    return {
        "rank": recipe.rank,
        "stage": recipe.spec.resolved_stage(recipe.world),
        "precision": recipe.precision,
        "trainable_params": rep["trainable_params"],
        "total_params": rep["total_params"],
        "optimizer_state_bytes": rep["optimizer_state_bytes"],
        "optimizer_numel": rep["optimizer_numel"],
        "fp32_master_numel": masters,
        "managed_params_are_lora_only": managed_ids <= lora_ids and len(managed_ids) > 0,
        "managed_params_all_lora": managed_ids == lora_ids,
        "frozen_requires_grad": [n for n, p in frozen if p.requires_grad],
        "frozen_with_grad": rep["frozen_with_grad"],
        "frozen_params": len(frozen),
        "frozen_numel": sum(getattr(p, "ds_numel", None) or p.numel() for _, p in frozen),
    }


# ------------------------------------------------------------------ main loop
def main() -> None:
    cfg = json.loads(sys.argv[1])
    threads = int(cfg.get("threads", 1))
    import torch

    torch.set_num_threads(threads)
    rank, world = int(cfg["rank"]), int(cfg["world"])
    global DEVICE
    DEVICE = cfg.get("device", "cpu")
    comm = None
    if cfg["contender"] == "lorafarm":
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(cfg["port"]), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
        # what Ray Train does: gloo on CPU, nccl on GPU
        dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo", rank=rank, world_size=world)
        if cfg.get("count_comm"):
            comm = CommCounter()
    elif cfg["contender"] == "hf_trainer" and world > 1:  # DDP over gloo, as `torchrun` + Trainer would
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(cfg["port"]), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    elif world != 1:
        raise SystemExit("the bare loop runs one process")
    from lorafarm.spec import validate_spec

    spec = validate_spec(cfg["spec"])
    rows = Rows(cfg["rows_uri"], spec, world, rank)
    t0 = time.perf_counter()
    contender = CONTENDERS[cfg["contender"]](cfg, spec, rows)
    reply({"ready": True, "setup_s": time.perf_counter() - t0, "threads": torch.get_num_threads()})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "memory":
            reply(contender.memory())
            continue
        if msg["cmd"] == "profile":
            reply(profile(contender, int(msg["steps"]), msg.get("kind", "cprofile")))
            continue
        steps = int(msg["steps"])
        at_first: dict[str, Any] = {}
        timer = Timer(on_first=(lambda first=at_first: first.update(zip(("bytes", "calls"), comm.snapshot(),
                                                                          strict=True))) if comm else None)
        if DEVICE == "cuda":
            torch.cuda.reset_peak_memory_stats()
        contender.run(steps, timer)
        out = timer.result([rows.step_tokens(s) for s in range(steps)])
        if DEVICE == "cuda":
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if comm:
            end_bytes, end_calls = comm.snapshot()
            n = out["steps"]
            out["comm_bytes_per_step"] = {k: (v - at_first["bytes"].get(k, 0)) / n for k, v in end_bytes.items()}
            out["comm_calls_per_step"] = {k: (v - at_first["calls"].get(k, 0)) / n for k, v in end_calls.items()}
        reply(out)
    if cfg["contender"] == "lorafarm":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def profile(contender, steps: int, kind: str) -> dict[str, Any]:
    """cProfile (Python time by function) or torch.profiler (operator time) over ``steps``."""
    import io

    timer = Timer()
    if kind in ("torch", "torch_shapes"):  # torch_shapes: operators grouped by their input shapes too
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as tprofile

        shapes = kind == "torch_shapes"
        with tprofile(activities=[ProfilerActivity.CPU], record_shapes=shapes) as prof:
            contender.run(steps, timer)
        table = prof.key_averages(group_by_input_shape=shapes).table(sort_by="self_cpu_time_total", row_limit=25)
    else:
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.enable()
        contender.run(steps, timer)
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(45)
        buf2 = io.StringIO()
        pstats.Stats(pr, stream=buf2).sort_stats("tottime").print_stats(30)
        table = buf.getvalue() + "\n" + buf2.getvalue()
    return {"kind": kind, "steps": steps, "table": table}


if __name__ == "__main__":
    main()
