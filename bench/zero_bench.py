"""Optimizer memory and gradient communication of lorafarm's DeepSpeed engine, ZeRO 0-3, on 2
ranks (real DeepSpeed, one process per rank over gloo, the quickstart's model and LoRA).

    .venv/bin/python bench/zero_bench.py [--stages 0,1,2,3] [--precisions fp32,bf16] [--steps 4]

Memory: optimizer state bytes per rank (Adam m and v, plus ZeRO's fp32 master partition in
bf16) against the ideal ``bytes_per_param * P_lora / world`` - 12 with bf16 (4 master + 4 m + 4
v), 8 with fp32 (the fp32 parameters are their own masters). ZeRO pads each rank's flat
partition to equal size (and to alignment), so per-rank figures may exceed the ideal by the
padding; the excess is reported. Proof that the frozen base holds nothing: the parameters the
ZeRO optimizer manages are exactly the LoRA factors, no frozen parameter requires or has a
gradient, and the fp32 master elements per rank sum to P_lora (+ padding).

Communication: payload bytes each rank hands to ``torch.distributed`` collectives per optimizer
step (steps 2..N, counted by wrapping the collectives DeepSpeed calls), against ``4 * P_lora``
(one fp32 gradient of every LoRA parameter). It includes the recipe's own two scalar
all-reduces (loss, tokens) per step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default="0,1,2,3")
    ap.add_argument("--precisions", default="fp32", help="bf16 needs a GPU (the spec refuses it on CPU)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--store", default=str(bl.BENCH / "out" / "store"))
    args = ap.parse_args(argv)
    world = args.world
    for precision in args.precisions.split(","):
        for stage in (int(s) for s in args.stages.split(",")):
            raw = bl.spec_dict(**{"zero.stage": stage, "zero.precision": precision, "resources.workers": world})
            rec = {"bench": "zero_memory_comm", "stage": stage, "precision": precision, "world": world}
            try:
                uri = bl.prepare_rows(raw, args.store)  # bf16 on CPU is refused here by the spec
                with bl.Gang("lorafarm", raw, uri, world=world, extra={"count_comm": True}) as g:
                    run = g.run(args.steps)
                    mem = g.command("memory")
            except Exception as e:  # noqa: BLE001 - recorded, the other configurations go on
                rec["error"] = str(e)[-800:]
                bl.emit(rec)
                continue
            p_lora = mem[0]["trainable_params"]
            per_param = 12 if precision in ("bf16", "fp16") else 8
            ideal = per_param * p_lora / (world if stage else 1)  # ZeRO-0 keeps a full copy on every rank
            comm = run.get("comm_bytes_per_step", {})
            comm_total = sum(comm.values())
            rec.update({
                "p_lora": p_lora,
                "p_total": mem[0]["total_params"],
                "optimizer_state_bytes_per_rank": [m["optimizer_state_bytes"] for m in mem],
                "ideal_bytes_per_rank": ideal,
                "bytes_per_param_ideal": per_param,
                "max_rank_over_ideal": max(m["optimizer_state_bytes"] for m in mem) / ideal,
                "optimizer_numel_per_rank": [m["optimizer_numel"] for m in mem],
                "padding_elements": sum(m["optimizer_numel"] for m in mem) - p_lora if stage else 0,
                "fp32_master_numel_per_rank": [m["fp32_master_numel"] for m in mem],
                "managed_params_exactly_lora": all(m["managed_params_all_lora"] for m in mem),
                "frozen_requires_grad": sum(len(m["frozen_requires_grad"]) for m in mem),
                "frozen_with_grad": sum(len(m["frozen_with_grad"]) for m in mem),
                "frozen_params": mem[0]["frozen_params"],
                "comm_bytes_per_step_rank0": comm,
                "comm_calls_per_step_rank0": run.get("comm_calls_per_step", {}),
                "comm_bytes_per_step_total": comm_total,
                "comm_ideal_4_p_lora": 4 * p_lora,
                "comm_over_ideal": comm_total / (4 * p_lora),
                "loadavg": bl.loadavg(),
            })
            bl.emit(rec)
            print(f"stage {stage} {precision}: opt bytes/rank {rec['optimizer_state_bytes_per_rank']} vs ideal "
                  f"{ideal:.0f} ({rec['max_rank_over_ideal']:.4f}x); comm {comm_total:.0f} B/step vs 4P "
                  f"{4 * p_lora} ({rec['comm_over_ideal']:.3f}x); frozen with grad {rec['frozen_with_grad']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
