"""Run in a subprocess by test_zero.py: one DeepSpeed rank per process over gloo; prints
what the engine's optimizer really holds as one JSON line. A fifth argument ``leak`` leaves
one base parameter (layer 0's q_proj weight) trainable, as a LoRA bug would."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    rank, world, stage, port = (int(x) for x in sys.argv[1:5])
    leak = sys.argv[5:6] == ["leak"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from lorafarm.model import apply_lora, load_base, resolve_base
    from lorafarm.spec import validate_spec
    from lorafarm.zero import base_optimizer, build_engine, memory_report

    spec = validate_spec({
        "tenant": "t", "name": "n", "dataset": {"uri": "unused"},
        "lora": {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0},
        "training": {"global_batch_size": 2 * world, "micro_batch_size": 1, "max_steps": 2},
        "zero": {"stage": stage}, "resources": {"workers": world},
    })
    model = apply_lora(load_base(resolve_base("tiny-llama")), spec.lora, seed=0)
    leaked = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    if leak:
        dict(model.named_parameters())[leaked].requires_grad_(True)
    lora_ids = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    engine, _ = build_engine(model, spec, world, 2)
    ids = torch.randint(4, 200, (1, 16), generator=torch.Generator().manual_seed(rank))
    for _ in range(engine.gradient_accumulation_steps()):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
    base_q = dict(model.named_parameters())[leaked]
    opt = base_optimizer(engine)
    opt_param_ids = {id(p) for g in opt.param_groups for p in g["params"]}
    report = memory_report(engine, model)
    base_q.requires_grad_(False)  # the optimizer's groups alone must still tell on it
    hidden = memory_report(engine, model)["frozen_with_grad"]
    print(json.dumps({
        "rank": rank,
        "stage": stage,
        "optimizer_params_are_lora": opt_param_ids == lora_ids if stage == 0 else None,
        "frozen_requires_grad": [n for n, p in model.named_parameters() if "lora_" not in n and p.requires_grad],
        "frozen_with_grad": report["frozen_with_grad"],
        "frozen_in_optimizer_only": hidden,
        "optimizer_params": report["optimizer_params"],
        "optimizer_non_model": report["optimizer_non_model"],
        "leaked_numel": getattr(base_q, "ds_numel", None) or base_q.numel(),
        "trainable_params": report["trainable_params"],
        "optimizer_numel": report["optimizer_numel"],
        "optimizer_state_bytes": report["optimizer_state_bytes"],
    }))


if __name__ == "__main__":
    main()
