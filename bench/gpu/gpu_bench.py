"""Single-GPU LoRA benchmark: a Llama-3.1-8B-shaped base (random bf16 weights from its config,
nothing downloaded), LoRA r=16 on q,k,v,o, bf16, seq 2048, ZeRO-2; lorafarm's recipe vs Hugging
Face ``Trainer`` + PEFT, gradient checkpointing on and off. See ``bench/gpu/RUNBOOK.md``.

    .venv/bin/python bench/gpu/gpu_bench.py --out bench/out/gpu [--steps 12] [--reps 2] [--ckpt on,off]
        [--attn sdpa,flash_attention_2] [--packing] [--loss-chunk -1|0|N]

``--attn`` loads the base with that attention implementation in every contender
(``LORAFARM_ATTN_IMPLEMENTATION``; flash needs the flash-attn package); ``--packing`` packs the
rows (lorafarm isolates them with the 4D mask under SDPA, with position ids alone under flash);
``--loss-chunk`` sets lorafarm's chunked loss (``LORAFARM_LOSS_CHUNK_TOKENS``; 0 = full logits,
-1 = the default of 130 tokens at vocabulary 128,256).

Figures per (contender, checkpointing): tokens/s/GPU (steps 2..N of each repetition), peak
memory (``torch.cuda.max_memory_allocated``), MFU = 6 * N_params * tokens/s / peak (989e12
dense bf16 for H100 SXM; ``LORAFARM_PEAK_FLOPS`` overrides), the ratio lorafarm / HF, and the
memory estimate (weights + LoRA states + activations) printed beside the peak.
Targets (issue 8): >= 45 % MFU, >= 1.3x HF + PEFT tokens/s, peak <= 1.1x the estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchlib as bl  # noqa: E402

LLAMA_31_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                   rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1,
                   eos_token_id=2, pad_token_id=0)


def write_base(directory: Path, layers: int | None) -> Path:
    """Random-weight bf16 base saved as a Hugging Face directory (once), with tiny-llama's
    byte tokenizer (the data are synthetic token ids, so the tokenizer is never used on text)."""
    if (directory / ".complete").exists():
        return directory
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorafarm.model.tiny import build_tokenizer

    cfg = dict(LLAMA_31_8B, **({"num_hidden_layers": layers} if layers else {}))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    build_tokenizer().save_pretrained(directory)
    del model
    torch.cuda.empty_cache()
    (directory / ".complete").write_text("ok")
    return directory


def write_rows(path: Path, rows: int, seq: int, vocab: int) -> str:
    """Full-length synthetic rows (no padding): every token is a label token."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lorafarm.data.pipeline import ROW_SCHEMA

    rng = np.random.default_rng(0)
    ids = rng.integers(4, vocab, size=(rows, seq + 1), dtype=np.int32)
    data = [{"input_ids": r[:-1].tolist(), "labels": r[1:].tolist(), "position_ids": list(range(seq)),
             "seq_lens": [seq], "n_labels": seq} for r in ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(data, schema=ROW_SCHEMA), path)
    return str(path)


def estimate_bytes(n_params: int, p_lora: int, seq: int, micro: int, cfg: dict, ckpt: bool) -> dict:
    """weights (bf16) + LoRA states (bf16 weight + bf16 grad + fp32 grad partition + fp32 master
    + Adam m, v = 20 B/param) + activations. Activations per layer follow Korthikanti et al.
    (2022) for bf16 with a fused (flash/sdpa) attention: 34·s·b·h bytes without checkpointing;
    with it, the layer inputs (2·s·b·h per layer) plus one layer recomputed. The LM head keeps
    logits in bf16 and fp32 for the loss and its gradient (10·s·b·V)."""
    h, layers, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    sbh = seq * micro * h
    act = (2 * sbh * layers + 34 * sbh) if ckpt else 34 * sbh * layers
    logits = 10 * seq * micro * v
    return {"weights": 2 * n_params, "lora_states": 20 * p_lora, "activations": act, "logits": logits,
            "total": 2 * n_params + 20 * p_lora + act + logits}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out/gpu")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/lorafarm-bench"))
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a smoke run (default: 32)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--accum", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--ckpt", default="on,off")
    ap.add_argument("--contenders", default="lorafarm,hf_trainer")
    ap.add_argument("--attn", default="sdpa", help="comma-separated attention implementations to compare")
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--loss-chunk", type=int, default=-1)
    args = ap.parse_args(argv)
    import torch

    from lorafarm.ops.accel import peak_flops

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = write_base(Path(args.cache) / f"llama31-8b-random-L{args.layers or 32}", args.layers)
    rows_uri = write_rows(Path(args.cache) / f"rows-{args.seq}.parquet", 64 * args.micro * args.accum // 8 + 64,
                          args.seq, LLAMA_31_8B["vocab_size"])
    cfg = dict(LLAMA_31_8B, **({"num_hidden_layers": args.layers} if args.layers else {}))
    device_name = torch.cuda.get_device_name(0)
    peak = peak_flops(device_name)
    records = []
    if args.loss_chunk >= 0:
        os.environ["LORAFARM_LOSS_CHUNK_TOKENS"] = str(args.loss_chunk)  # the Gang's processes inherit it
    for ckpt, attn in [(c, a) for c in args.ckpt.split(",") for a in args.attn.split(",")]:
        os.environ["LORAFARM_ATTN_IMPLEMENTATION"] = attn
        raw = bl.spec_dict(**{
            "base_model": str(base), "lora.r": 16, "lora.alpha": 32, "lora.target_modules": ["q_proj", "k_proj",
                                                                                            "v_proj", "o_proj"],
            "training.seq_len": args.seq, "training.micro_batch_size": args.micro,
            "training.global_batch_size": args.micro * args.accum, "training.learning_rate": 2e-4,
            "zero.stage": 2, "zero.precision": "bf16", "zero.gradient_checkpointing": ckpt == "on",
            "training.packing": args.packing,
            "resources.gpus_per_worker": 1})
        runs: dict[str, list[dict]] = {c: [] for c in args.contenders.split(",")}
        n_params = p_lora = 0
        for rep in range(args.reps):  # one contender on the GPU at a time: A B, A B (alternating)
            for name in (list(runs) if rep % 2 == 0 else list(reversed(runs))):
                with bl.Gang(name, raw, rows_uri, extra={"device": "cuda"}) as g:
                    g.run(2)
                    runs[name].append(g.run(args.steps))
                    if name == "lorafarm" and not n_params:
                        mem = g.command("memory")[0]
                        n_params, p_lora = mem["total_params"], mem["trainable_params"]
        est = estimate_bytes(n_params, p_lora, args.seq, args.micro, cfg, ckpt == "on")
        for name, rs in runs.items():
            tps = bl.spread([r["tokens_per_s"] for r in rs])
            peak_mem = max(r["peak_memory_bytes"] for r in rs)
            rec = {"bench": "gpu_step", "device": device_name, "contender": name, "grad_ckpt": ckpt == "on",
                   "attn": attn, "packing": args.packing, "loss_chunk_tokens": os.environ.get("LORAFARM_LOSS_CHUNK_TOKENS"),
                   "seq": args.seq, "micro": args.micro, "accum": args.accum, "tokens_per_s": tps,
                   "mfu": 6 * n_params * tps["median"] / peak if peak else None, "peak_memory_bytes": peak_mem,
                   "estimate_bytes": est, "peak_over_estimate": peak_mem / est["total"],
                   "n_params": n_params, "p_lora": p_lora}
            if name != "lorafarm" and "lorafarm" in runs:
                rec["lorafarm_over_this"] = runs["lorafarm"] and bl.spread(
                    [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(runs["lorafarm"], rs, strict=True)])
            records.append(rec)
            bl.emit(rec)
            mfu = f"{rec['mfu']:.1%}" if rec["mfu"] is not None else "n/a"
            print(f"ckpt {ckpt} attn {attn} {name}: {tps['median']:,.0f} tokens/s/GPU [{tps['min']:,.0f}-{tps['max']:,.0f}], "
                  f"MFU {mfu}, peak {peak_mem / 2**30:.1f} GiB vs estimate {est['total'] / 2**30:.1f} GiB "
                  f"({rec['peak_over_estimate']:.2f}x)", flush=True)
    (out / "gpu_results.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": bl.machine(),
                                                      "device": device_name, "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
