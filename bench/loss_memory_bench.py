"""Peak memory of one training step with the chunked loss vs the full logits (issue 19).

    .venv/bin/python bench/loss_memory_bench.py [--vocab 128256] [--seq 2048] [--reps 2]

A small random Llama (hidden 64, 2 layers, untied head) with Llama 3's vocabulary, LoRA r=8 on
q,v, one row of ``--seq`` tokens, every position a label: forward + backward of the summed token
cross-entropy, each variant in a fresh process (so neither inherits the other's allocator
pages). Peak memory is the process's peak RSS during the step above its RSS just before it
(the peak counter is reset through ``/proc/self/clear_refs``), so it counts everything the step
allocates: activations, logits, cross-entropy's buffers, gradients. The same process also writes
the loss and every LoRA gradient, which the parent compares (relative to the full path).
Target: chunked peak <= 0.3x the full one, loss and gradients within 1e-6 relative.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(vocab: int, seq: int, chunk: int, out: str) -> None:
    """One step in this process; writes loss, grads, peak and time to ``out`` (torch.save)."""
    import gc

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorafarm.model import apply_lora
    from lorafarm.model.loss import TokenLoss
    from lorafarm.spec import LoraSpec

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=seq,
                      tie_word_embeddings=False)
    base = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    base.requires_grad_(False)
    model = apply_lora(base, LoraSpec(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]), seed=0)
    with torch.no_grad():  # non-zero B so every LoRA gradient is non-trivial
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (1, seq), generator=g)
    batch = {"input_ids": ids, "labels": torch.cat([ids[:, 1:], torch.full((1, 1), -100)], 1),
             "position_ids": torch.arange(seq)[None], "attention_mask": torch.ones(1, seq, dtype=torch.long)}
    loss_fn = TokenLoss(model, chunk_tokens=chunk)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    before = rss_kib("VmRSS")
    t0 = time.perf_counter()
    loss = loss_fn(model, batch)
    loss.backward()
    dt = time.perf_counter() - t0
    peak = rss_kib("VmHWM")
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"loss": loss.detach(), "grads": grads, "peak_kib": peak - before, "rss_before_kib": before,
                "step_s": dt, "chunked": loss_fn.chunked, "chunk_tokens": loss_fn.chunk_tokens}, out)


def run_child(vocab: int, seq: int, chunk: int, threads: int) -> dict:
    import torch

    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "r.pt")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TRANSFORMERS_VERBOSITY": "error"}
        p = subprocess.run([sys.executable, __file__, "--child", str(vocab), str(seq), str(chunk), out], env=env,
                           capture_output=True, text=True, cwd=str(bl.REPO))
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-3000:])
        return torch.load(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=128_256)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=2, help="fresh processes per variant (alternating)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=-1, help="label tokens per chunk (-1: lorafarm's default)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        v, s, c, out = args.child
        child(int(v), int(s), int(c), out)
        return 0
    from lorafarm.model.loss import chunk_tokens_for

    chunk = chunk_tokens_for(args.vocab) if args.chunk < 0 else args.chunk
    load0 = bl.loadavg()
    runs: dict[str, list[dict]] = {"full": [], "chunked": []}
    for _ in range(args.reps):
        runs["full"].append(run_child(args.vocab, args.seq, 0, args.threads))
        runs["chunked"].append(run_child(args.vocab, args.seq, chunk, args.threads))
    f, c = runs["full"][0], runs["chunked"][0]
    assert not f["chunked"] and c["chunked"]
    loss_rel = abs(float(c["loss"]) - float(f["loss"])) / abs(float(f["loss"]))
    grad_rel = max(float((c["grads"][k] - f["grads"][k]).norm() / f["grads"][k].norm()) for k in f["grads"])
    assert c["grads"].keys() == f["grads"].keys() and len(f["grads"]) > 0
    peak = {k: bl.spread([r["peak_kib"] * 1024 for r in rs]) for k, rs in runs.items()}
    step = {k: bl.spread([r["step_s"] for r in rs]) for k, rs in runs.items()}
    ratio = peak["chunked"]["median"] / peak["full"]["median"]
    logits_bytes = args.seq * args.vocab * 4
    rec = {"bench": "loss_memory", "vocab": args.vocab, "seq": args.seq, "chunk_tokens": chunk, "reps": args.reps,
           "threads": args.threads, "full_logits_bytes_fp32": logits_bytes, "peak_step_bytes": peak, "step_s": step,
           "peak_ratio_chunked_over_full": ratio, "loss_rel_diff": loss_rel, "grad_max_rel_diff": grad_rel,
           "targets": {"peak_ratio": 0.3, "rel_diff": 1e-6}, "loadavg_before": load0, "loadavg_after": bl.loadavg(),
           "met": ratio <= 0.3 and loss_rel <= 1e-6 and grad_rel <= 1e-6}
    bl.emit(rec)
    mib = 1 << 20
    print(f"vocab {args.vocab}, seq {args.seq} (full fp32 logits {logits_bytes / mib:,.0f} MiB), chunk {chunk} tokens")
    print(f"peak step memory: full {peak['full']['median'] / mib:,.0f} MiB, chunked {peak['chunked']['median'] / mib:,.0f} "
          f"MiB = {ratio:.3f}x (target <= 0.3x); step time full {step['full']['median']:.2f} s, "
          f"chunked {step['chunked']['median']:.2f} s")
    print(f"loss rel diff {loss_rel:.2e}, max LoRA grad rel diff {grad_rel:.2e} (target <= 1e-6): "
          f"{'met' if rec['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
