"""Checkpoint size and save/load time: the quickstart's LoRA (r=16, all-linear, tiny-llama) and
a Llama-3.1-8B-sized LoRA (r=16 on q,k,v,o, shapes from the config, random values).

A checkpoint holds 12 bytes per trainable parameter (fp32 weights + Adam's two moments), plus
small state; never the frozen base. This times what a save does after the collective gather:
serialise with safetensors, write to the store (local directory: temp file + fsync + rename),
hash for the marker — and reading it back with the sha256 check.

    python bench/checkpoint_bench.py [--store DIR] [--repeats N] [--out FILE.json]

Prints ``BENCH {json}`` lines (bench/run_all.py format).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lorafarm.storage import join, read_bytes, write_bytes  # noqa: E402
from lorafarm.worker.zero_state import load_tensors, save_tensors  # noqa: E402


def lora_shapes_8b(r: int = 16) -> dict[str, tuple[int, int]]:
    """Llama-3.1-8B: hidden 4096, 32 layers, 8 KV heads of 128 (k/v out 1024)."""
    hidden, kv, layers = 4096, 1024, 32
    outs = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    shapes = {}
    for layer in range(layers):
        for name, out in outs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            shapes[f"{prefix}.lora_A.weight"] = (r, hidden)
            shapes[f"{prefix}.lora_B.weight"] = (out, r)
    return shapes


def quickstart_shapes() -> dict[str, tuple[int, int]]:
    from lorafarm.model import apply_lora, load_base, resolve_base
    from lorafarm.spec import validate_spec

    spec = validate_spec({"tenant": "b", "name": "b", "dataset": {"uri": "x"},
                          "lora": {"r": 16, "alpha": 32, "target_modules": "all-linear"}})
    model = apply_lora(load_base(resolve_base("tiny-llama")), spec.lora, seed=0)
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def measure(shapes: dict[str, tuple[int, int]], store: Path, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    moments = {f"{n}::{k}": torch.randn(s, generator=g).abs() for n, s in shapes.items() for k in ("exp_avg", "exp_avg_sq")}
    params = sum(t.numel() for t in weights.values())
    saves, loads, size = [], [], 0
    for i in range(repeats):
        uri = join(str(store), f"step-{i}")
        t0 = time.perf_counter()
        blobs = {"weights.safetensors": save_tensors(weights), "optimizer.safetensors": save_tensors(moments)}
        for name, data in blobs.items():
            write_bytes(join(uri, name), data)
        marker = {n: hashlib.sha256(d).hexdigest() for n, d in blobs.items()}
        write_bytes(join(uri, "checkpoint.json"), json.dumps(marker).encode())
        saves.append(time.perf_counter() - t0)
        size = sum(len(d) for d in blobs.values())
        t0 = time.perf_counter()
        for name, digest in marker.items():
            data = read_bytes(join(uri, name))
            assert hashlib.sha256(data).hexdigest() == digest
            load_tensors(data)
        loads.append(time.perf_counter() - t0)
    return {"trainable_params": params, "checkpoint_bytes": size, "bytes_per_param": size / params,
            "save_s_median": statistics.median(saves), "load_s_median": statistics.median(loads),
            "save_mb_per_s": size / 1e6 / statistics.median(saves), "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="local directory to write into (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lf-ckpt-bench-") as tmp:
        store = Path(args.store or tmp)
        result = {
            "quickstart (tiny-llama, r=16, all-linear)": measure(quickstart_shapes(), store / "quick", args.repeats),
            "llama-3.1-8b shapes (r=16, q,k,v,o)": measure(lora_shapes_8b(), store / "8b", args.repeats),
        }
    for case, record in result.items():
        print("BENCH " + json.dumps({"bench": "checkpoint", "case": case, **record}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
