"""Run in a subprocess by test_chunked_loss.py: the real recipe (one DeepSpeed ZeRO-2 rank over
gloo, the quickstart's LoRA and data, 3 steps, no Ray) with whatever ``LORAFARM_LOSS_CHUNK_TOKENS``
the environment gives; writes the losses and the LoRA tensors before and after as JSON.
Arguments: a store directory, the output file, optionally a ZeRO stage (default 2)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    store_dir, out = sys.argv[1:3]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    from lorafarm.data import prepare
    from lorafarm.model import resolve_base
    from lorafarm.spec import validate_spec
    from lorafarm.storage import Store
    from lorafarm.worker.recipe import LoraRecipe, WorkerConfig

    spec = validate_spec({
        "tenant": "t", "name": "chunked", "base_model": "tiny-llama",
        "dataset": {"uri": str(ROOT / "jobs/data/pirate_chat.jsonl"), "format": "chat", "eval_fraction": 0.0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "training": {"max_steps": 3, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 256,
                     "learning_rate": 2e-3, "warmup_steps": 0, "seed": 0, "checkpoint_every_steps": 0},
        "zero": {"stage": int(sys.argv[3]) if len(sys.argv) > 3 else 2}, "resources": {"workers": 1},
    })
    rows_uri = prepare(spec, str(resolve_base(spec.base_model)), Store.open(store_dir), parallel=False).train_uri
    cfg = WorkerConfig(spec=spec, job_id="probe", adapter_uri="unused", job_uri="unused", train_rows_uri=rows_uri,
                       eval_rows_uri=None, data_stats={}, dataset_fingerprint="probe")
    recipe = LoraRecipe(cfg, 0, 1)
    recipe.setup()

    def lora() -> dict[str, list]:
        return {n: p.detach().tolist() for n, p in recipe.model.named_parameters() if "lora_" in n}

    init = lora()
    recipe.train()
    Path(out).write_text(json.dumps({"chunked": recipe.token_loss.chunked, "losses": [h["loss"] for h in recipe.history],
                                     "lora": lora(), "lora_init": init}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
