"""Run every CPU benchmark and write one JSON file and one Markdown table.

    .venv/bin/python bench/run_all.py --out bench/out [--quick] [--only throughput,matrix,loss_memory,zero,...]

Each benchmark runs as its own subprocess (so one crash does not lose the others) and prints
``BENCH {json}`` lines (``policy_bench.py`` and ``metrics_bench.py`` print plain JSON lines,
taken as they are). Writes ``OUT/results.json`` (machine, versions, load averages, every
record, the command of each) and ``OUT/results.md``. About 12 minutes on 2 idle cores;
``--quick`` about 3 (fewer repetitions and steps, no 1-vs-2-worker scaling, fp32 only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402

PY = sys.executable


def plan(quick: bool) -> dict[str, list[str]]:
    b = "bench/"
    if quick:
        return {
            "throughput": [PY, b + "throughput_bench.py", "--reps", "3", "--steps", "5", "--no-scaling"],
            "matrix": [PY, b + "shape_matrix.py", "--reps", "2", "--steps", "9"],
            "loss_memory": [PY, b + "loss_memory_bench.py", "--reps", "1"],
            "zero": [PY, b + "zero_bench.py", "--stages", "1,2,3", "--precisions", "fp32", "--steps", "3"],
            "data": [PY, b + "data_bench.py", "--copies", "3", "--reps", "1"],
            "policy": [PY, b + "policy_bench.py", "--seconds", "1"],
            "metrics": [PY, b + "metrics_bench.py", "--repeat", "50"],
            "checkpoint": [PY, b + "checkpoint_bench.py", "--repeats", "1"],
        }
    return {
        "throughput": [PY, b + "throughput_bench.py", "--reps", "5", "--steps", "8"],
        "matrix": [PY, b + "shape_matrix.py", "--reps", "3", "--steps", "17"],
        "loss_memory": [PY, b + "loss_memory_bench.py", "--reps", "2"],
        "zero": [PY, b + "zero_bench.py", "--stages", "0,1,2,3", "--precisions", "fp32", "--steps", "4"],
        "data": [PY, b + "data_bench.py", "--copies", "10", "--reps", "3"],
        "policy": [PY, b + "policy_bench.py", "--seconds", "3"],
        "metrics": [PY, b + "metrics_bench.py"],
        "checkpoint": [PY, b + "checkpoint_bench.py"],
        "scheduler": [PY, b + "scheduler_bench.py", "--reps", "3"],
    }


def run_one(name: str, cmd: list[str], timeout: float) -> dict:
    t = time.perf_counter()
    load = bl.loadavg()
    try:
        p = subprocess.run(cmd, cwd=str(bl.REPO), capture_output=True, text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    records = []
    for line in out.splitlines():
        if line.startswith("BENCH "):
            records.append(json.loads(line[6:]))
        elif line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    shown = " ".join(c.replace(PY, ".venv/bin/python") for c in cmd)
    return {"name": name, "command": shown, "rc": rc, "seconds": time.perf_counter() - t, "loadavg_before": load,
            "loadavg_after": bl.loadavg(), "records": records, "stderr_tail": err[-2000:] if rc else ""}


def fmt(x: float, nd: int = 2) -> str:
    return f"{x:,.{nd}f}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"# lorafarm CPU benchmarks ({results['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, no GPU; Python {m['python']}, torch {m['torch']}, "
             f"DeepSpeed {m['deepspeed']}, transformers {m['transformers']}, PEFT {m['peft']}, Ray {m['ray']}. "
             f"Mode: {'quick' if results['quick'] else 'full'}.", "",
             "| benchmark | figure | value | target | command | load avg (1/5/15 min, before → after) |",
             "| --- | --- | --- | --- | --- | --- |"]

    def row(bench, figure, value, target, run):
        la = f"{run['loadavg_before']} → {run['loadavg_after']}"
        lines.append(f"| {bench} | {figure} | {value} | {target} | `{run['command']}` | {la} |")

    for run in results["runs"]:
        if run["rc"] != 0 and not run["records"]:
            row(run["name"], "FAILED", f"rc {run['rc']}", "", run)
            continue
        for r in run["records"]:
            kind = r.get("bench")
            if kind == "step_throughput":
                res = r["results"]
                for n in ("lorafarm", "hf_trainer", "bare"):
                    s, c = res[n]["tokens_per_s"], res[n]["tokens_per_cpu_s"]
                    row("step throughput", f"{n} tokens/s (wall; per CPU-s)",
                        f"{fmt(s['median'], 0)} [{fmt(s['min'], 0)}–{fmt(s['max'], 0)}]; "
                        f"{fmt(c['median'], 0)} [{fmt(c['min'], 0)}–{fmt(c['max'], 0)}]", "", run)
                for n, tgt in (("hf_trainer", "≥ 1.0×"), ("bare", "≥ 0.95×")):
                    w, c = res[n]["ratio_vs"]["wall"], res[n]["ratio_vs"]["cpu"]
                    row("step throughput", f"lorafarm / {n} (paired; wall, per CPU-s)",
                        f"{w['median']:.3f}× [{w['min']:.3f}–{w['max']:.3f}]; {c['median']:.3f}× "
                        f"[{c['min']:.3f}–{c['max']:.3f}]", tgt, run)
            elif kind == "scaling":
                res = r["results"]
                for n in ("1w", "2w"):
                    s = res[n]["tokens_per_s"]
                    row("scaling", f"lorafarm {n} tokens/s (wall)", f"{fmt(s['median'], 0)} "
                        f"[{fmt(s['min'], 0)}–{fmt(s['max'], 0)}]", "", run)
                w = res["1w"]["ratio_vs"]["wall"]
                row("scaling", "2 workers / 1 worker tokens/s", f"{w['median']:.3f}× [{w['min']:.3f}–{w['max']:.3f}]",
                    "(overhead on CPU)", run)
            elif kind == "zero_memory_comm":
                tag = f"ZeRO-{r['stage']} {r['precision']}"
                if "error" in r:
                    row("memory/comm", tag, "error: " + r["error"][-150:].replace("|", "/").replace("\n", " "), "", run)
                    continue
                row("memory", f"{tag}: optimizer bytes/rank vs {r['bytes_per_param_ideal']}·P_lora/world",
                    f"{r['optimizer_state_bytes_per_rank']} vs {fmt(r['ideal_bytes_per_rank'], 0)} "
                    f"({r['max_rank_over_ideal']:.4f}×; padding {r['padding_elements']} elems)", "≈ 1×", run)
                row("memory", f"{tag}: frozen params with grad / requiring grad; managed == LoRA",
                    f"{r['frozen_with_grad']} / {r['frozen_requires_grad']} of {r['frozen_params']}; "
                    f"{r['managed_params_exactly_lora']}; fp32 masters/rank {r['fp32_master_numel_per_rank']}",
                    "0 / 0; True", run)
                row("comm", f"{tag}: collective bytes/step/rank vs 4·P_lora",
                    f"{fmt(r['comm_bytes_per_step_total'], 0)} vs {r['comm_ideal_4_p_lora']} "
                    f"({r['comm_over_ideal']:.3f}×) {json.dumps(r['comm_bytes_per_step_rank0'])}", "≈ 1×", run)
            elif kind == "tokenize":
                row("data", f"tokenize {r['examples']} examples: single process",
                    f"{fmt(r['single_examples_per_s'], 0)} ex/s, {fmt(r['single_tokens_per_s'], 0)} tok/s", "", run)
                row("data", f"Ray Data on {r['ray_cpus']} CPUs", f"{fmt(r['ray_examples_per_s'], 0)} ex/s "
                    f"({r['ray_over_single']:.2f}× single)", "", run)
                row("data", "cache hit", f"{r['cache_hit_s']['median'] * 1e3:.1f} ms", "", run)
            elif kind == "policy_decide":
                row("scheduler", f"policy decide, {r['state']} ({r['queued']} queued)",
                    f"{fmt(r['calls_per_s'], 1)} decide() calls/s ({r['ms_per_call']} ms); "
                    f"{fmt(r['queued_ranked_per_s'], 0)} queued jobs ranked/s; {fmt(r['considered_per_s'], 0)} "
                    "considered/s", "≥ 10,000 decisions/s (issue 4; see policy_bench)", run)
            elif "generate_latest_ms_median" in r:
                row("metrics", f"/metrics scrape, {r.get('jobs')} jobs", f"{r['generate_latest_ms_median']} ms, "
                    f"{r['payload_bytes'] / 1024:.1f} KiB", "", run)
            elif kind == "loss_memory":
                p = r["peak_step_bytes"]
                row("loss memory", f"peak step memory chunked / full (vocab {r['vocab']:,}, seq {r['seq']})",
                    f"{r['peak_ratio_chunked_over_full']:.3f}× ({p['chunked']['median'] / 2**20:,.0f} vs "
                    f"{p['full']['median'] / 2**20:,.0f} MiB); loss {r['loss_rel_diff']:.1e}, grads "
                    f"{r['grad_max_rel_diff']:.1e} rel", "≤ 0.3×; ≤ 1e-6 — " + ("met" if r["met"] else "MISSED"), run)
            elif kind == "shape_matrix_cell":
                continue  # its own table below
            elif kind == "checkpoint":
                row("checkpoint", f"{r['case']}: size; save; load+verify",
                    f"{r['checkpoint_bytes'] / 1e6:.2f} MB ({r['bytes_per_param']:.2f} B/param); "
                    f"{r['save_s_median']:.3f} s; {r['load_s_median']:.3f} s", "", run)
            elif kind == "scheduler_overhead":
                v, d = r["via_scheduler_s"], r["direct_run_s"]
                row("scheduler", r["what"], f"{v['median']:.1f} s vs {d['median']:.1f} s = {r['ratio_median']:.3f}× "
                    f"(+{r['overhead_s_median']:.2f} s; queued {r['queued_s_median']:.2f} s)", "", run)
    cells = [r for run in results["runs"] for r in run["records"] if r.get("bench") == "shape_matrix_cell"]
    if cells:  # the shape matrix (issue 19) as its own table: one row per cell, met/missed per baseline
        from shape_matrix import table

        lines += ["", "## Shape matrix (paired wall ratio lorafarm/baseline, median [min–max]; CPU-time ratio)", "",
                  table(cells)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated subset of: throughput,matrix,loss_memory,zero,data,policy,metrics,"
                    "checkpoint,scheduler")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    only = {s for s in args.only.split(",") if s}
    results = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "machine": bl.machine(), "runs": []}
    t0 = time.perf_counter()
    for name, cmd in plan(args.quick).items():
        if only and name not in only:
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        run = run_one(name, cmd, args.timeout)
        print(f"   rc {run['rc']} in {run['seconds']:.0f} s, {len(run['records'])} records", flush=True)
        if run["rc"]:
            print(run["stderr_tail"][-800:], flush=True)
        results["runs"].append(run)
    results["total_seconds"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    md = markdown(results)
    (out / "results.md").write_text(md)
    print(md)
    return 0 if all(r["rc"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
