"""Run in a subprocess by test_cotrain_deepspeed.py: one DeepSpeed rank over gloo at ZeRO stage
``argv[1]``. Trains the three members of ``test_cotrain_routing`` alone, each through
lorafarm's own ``build_engine`` (its spec: learning rate, steps, batch, warm-up + cosine
schedule), then together as one pack on one engine (one AdamW param group and one schedule per
member), and prints each member's largest relative difference, pack vs alone, as one JSON line.
``argv[3]``: every member's ``max_grad_norm`` (alone: DeepSpeed's clipping; in the pack: each
param group by its own norm, :func:`lorafarm.cotrain.member_optimizer`; 0 = off)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    stage, port = int(sys.argv[1]), int(sys.argv[2])
    clip = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0  # every member's max_grad_norm (0: off)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    import deepspeed
    from test_cotrain_routing import MEMBERS, base, per_row_loss, rel, rows_for

    from lorafarm.cotrain import member_loss, member_optimizer, member_parameters, new_pack, routed
    from lorafarm.model import apply_lora
    from lorafarm.spec import validate_spec
    from lorafarm.zero import build_engine
    from lorafarm.zero.config import ds_config, lr_lambda

    dtype = torch.float32
    specs = {}
    for m, (lora, _seed, lr, steps, n) in MEMBERS.items():
        specs[m] = validate_spec({
            "tenant": "t", "name": m, "dataset": {"uri": "unused"}, "lora": lora.model_dump(mode="json"),
            "training": {"global_batch_size": n, "micro_batch_size": n, "max_steps": steps, "learning_rate": lr,
                         "warmup_steps": 1, "max_grad_norm": clip, "weight_decay": 0.01},
            "zero": {"stage": stage}, "resources": {"workers": 1},
        })

    alone = {}
    for m, (lora, seed, _lr, steps, n) in MEMBERS.items():
        model = apply_lora(base(dtype), lora, seed=seed)
        engine, _ = build_engine(model, specs[m], 1, steps)
        engine.train()
        for step in range(steps):
            loss, labels = per_row_loss(engine, rows_for(m, step, n), dtype)
            engine.backward(loss.sum() / labels.sum())
            engine.step()
        alone[m] = {k.replace(".default.", "."): v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}

    model = new_pack(base(dtype), {m: (lora, seed) for m, (lora, seed, *_) in MEMBERS.items()})
    groups = [{"params": member_parameters(model, m), "lr": specs[m].training.learning_rate,
               "weight_decay": specs[m].training.weight_decay, "max_grad_norm": specs[m].training.max_grad_norm}
              for m in MEMBERS]
    optimizer = member_optimizer(groups, partitioned=stage >= 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lr_lambda(s.training.warmup_steps, s.training.max_steps, s.training.min_lr_ratio) for s in specs.values()])
    config = {**ds_config(specs["x"], 1, 4), "train_batch_size": 1, "train_micro_batch_size_per_gpu": 1,
              "gradient_accumulation_steps": 1, "gradient_clipping": 0.0}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=config,
                                           dist_init_required=False)
    engine.train()
    packed = {}
    for step in range(max(s for *_, s, _ in MEMBERS.values())):
        live = [m for m in MEMBERS if step < MEMBERS[m][3]]
        rows, members = [], []
        for m in live:  # a pack orders its rows by member
            r = rows_for(m, step, MEMBERS[m][4])
            rows += r
            members += [m] * len(r)
        with routed(model, members):
            loss, labels = per_row_loss(engine, rows, dtype)
        totals = {m: int(sum(int(labels[i]) for i in range(len(rows)) if members[i] == m)) for m in live}
        engine.backward(member_loss(loss, members, totals))
        engine.step()
        for m in live:
            if step + 1 == MEMBERS[m][3]:  # its last step: what it publishes
                packed[m] = {k.replace(f".{m}.", "."): v.detach().clone() for k, v in model.named_parameters()
                             if "lora_" in k and k.endswith(f".{m}.weight")}
    init = {m: {k.replace(".default.", "."): v for k, v in apply_lora(base(dtype), lora, seed=seed).named_parameters()
                if "lora_" in k} for m, (lora, seed, *_) in MEMBERS.items()}
    print(json.dumps({"stage": stage, "clip": clip, "rel": {m: rel(packed[m], alone[m]) for m in MEMBERS},
                      "trained": {m: rel(init[m], alone[m]) for m in MEMBERS}}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
