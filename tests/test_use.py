"""``lorafarm try`` / ``lorafarm eval`` / ``merge --scale`` on adapters really trained by ``lorafarm run``.

Two jobs are trained once per module, side by side: the quickstart (pirate chat) and a
prompt-completion job on a generated labelled sentiment set. The CLI is driven in-process
(``main([...])``) where only behaviour matters, and as a subprocess where the process boundary
does (exit codes, no traceback).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lorafarm.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "lorafarm.cli.main"]

POS = ["great", "lovely", "excellent", "wonderful", "superb", "delightful"]
NEG = ["awful", "terrible", "horrible", "dreadful", "lousy", "miserable"]
THINGS = ["food", "service", "room", "view", "music", "staff", "coffee", "trip"]
TEMPLATES = ["The {t} was {w}", "What a {w} {t}", "Honestly, {w} {t}", "{w} {t}, really"]


def sentiment_rows(seed: int, n: int) -> list[dict[str, str]]:
    """Balanced labelled reviews; the completion is the label string ("positive"/"negative").

    Each review closes with an emoticon right before the label. On the random 4-layer
    tiny-llama that local cue is learnt in ~20 steps; a cue only in the words takes ~120 steps
    (attention must learn to look back first), too slow for CI."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        text = rng.choice(TEMPLATES).format(t=rng.choice(THINGS), w=rng.choice(POS if positive else NEG))
        rows.append({"prompt": f"Review: {text} {':)' if positive else ':('}",
                     "completion": "positive" if positive else "negative"})
    return rows


def sentiment_split(seed: int, n_train: int, n_test: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Disjoint, balanced train and test sets drawn from every distinct review (384 of them):
    no test prompt is ever trained on."""
    rng = random.Random(seed)
    by_label: dict[bool, list[dict[str, str]]] = {}
    for positive in (True, False):
        reviews = [f"Review: {tpl.format(t=t, w=w)} {':)' if positive else ':('}" for tpl in TEMPLATES
                   for t in THINGS for w in (POS if positive else NEG)]
        rng.shuffle(reviews)
        by_label[positive] = [{"prompt": r, "completion": "positive" if positive else "negative"} for r in reviews]

    def take(start: int, n: int) -> list[dict[str, str]]:
        return [by_label[i % 2 == 0][start + i // 2] for i in range(n)]

    return take(n_test // 2, n_train), take(0, n_test)


def pirate_split(n_heldout: int) -> tuple[list[dict], list[dict]]:
    """jobs/data/pirate_chat.jsonl split into training rows and the last ``n_heldout``
    distinct conversations, none of which (nor any copy of one) is trained on."""
    lines = (ROOT / "jobs/data/pirate_chat.jsonl").read_text().splitlines()
    heldout = list(dict.fromkeys(reversed(lines)))[:n_heldout][::-1]
    held = set(heldout)
    return [json.loads(x) for x in lines if x not in held], [json.loads(x) for x in heldout]


def _key(row: dict) -> str:
    return json.dumps(row, sort_keys=True)


def test_the_held_out_sets_are_disjoint_from_the_training_data():
    train, test = sentiment_split(1, 240, 60)
    assert len(train) == 240 and len(test) == 60 and not {_key(r) for r in train} & {_key(r) for r in test}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert [r["completion"] for r in test].count("positive") == 30
    train, heldout = pirate_split(48)
    assert len(heldout) == 48 and len(train) >= 300
    assert not {_key(r) for r in train} & {_key(r) for r in heldout}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # One torch thread: the CI machine has 2 shared cores and 2 threads thrash under load.
    out.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0",
               TOKENIZERS_PARALLELISM="false")
    out.update(extra)
    return out


def _start_job(spec: str, store: Path, overrides: list[str]) -> subprocess.Popen:
    sets = [a for o in overrides for a in ("--set", o)]
    # A private RAY_TMPDIR: never join a cluster someone else started on this machine.
    ray_tmp = tempfile.mkdtemp(prefix="lfray-", dir="/tmp")
    proc = subprocess.Popen([*CLI, "run", spec, "--json", *sets], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(LORAFARM_STORE=str(store), RAY_TMPDIR=ray_tmp))
    proc.ray_tmp = ray_tmp  # type: ignore[attr-defined]
    return proc


def _finish_job(proc: subprocess.Popen, name: str, retry) -> dict:
    """The job's --json result; a job whose local Ray did not come up in Ray's fixed 30 s (a
    loaded machine) is started once more."""
    out, err = proc.communicate(timeout=600)
    shutil.rmtree(proc.ray_tmp, ignore_errors=True)  # type: ignore[attr-defined]
    if proc.returncode != 0 and "timed out during startup" in err and retry is not None:
        return _finish_job(retry(), name, None)
    assert proc.returncode == 0, f"{name}: {err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The quickstart adapter and a sentiment-label adapter, trained side by side (~2-3 min)."""
    tmp = tmp_path_factory.mktemp("use")
    store = tmp / "store"
    sentiment_train, sentiment_test = sentiment_split(1, 240, 60)  # disjoint: test_the_held_out_sets_are_disjoint...
    train = write_jsonl(tmp / "sentiment_train.jsonl", sentiment_train)
    test = write_jsonl(tmp / "sentiment_test.jsonl", sentiment_test)
    pirate_train_rows, pirate_heldout_rows = pirate_split(48)
    pirate_train = write_jsonl(tmp / "pirate_train.jsonl", pirate_train_rows)
    pirate_eval = write_jsonl(tmp / "pirate_heldout.jsonl", pirate_heldout_rows)
    common = ["resources.workers=1", "training.warmup_steps=2", "training.eval_every_steps=0",
              "dataset.eval_fraction=0"]
    jobs = {
        "pirate": lambda: _start_job("jobs/quickstart.yaml", store,
                                     [*common, f"dataset.uri={pirate_train}", "training.max_steps=30",
                                      "training.seq_len=128"]),
        "labels": lambda: _start_job("jobs/prompt_completion.yaml", store,
                                     [*common, "name=sentiment", f"dataset.uri={train}", "training.max_steps=30",
                                      "training.seq_len=64", "training.learning_rate=0.005",
                                      "training.micro_batch_size=16", "lora.r=16", "lora.alpha=32",
                                      "lora.target_modules=all-linear"]),
    }
    procs = {"pirate": jobs["pirate"]()}
    # Start the second once the first one's Ray is up (its job directory appears): two Ray
    # nodes starting at once on 2 busy cores can miss Ray's startup deadline.
    deadline = time.time() + 120
    while time.time() < deadline and procs["pirate"].poll() is None and not list(store.glob("demo/*/spec.yaml")):
        time.sleep(0.5)
    procs["labels"] = jobs["labels"]()
    try:
        results = {name: _finish_job(proc, name, jobs[name]) for name, proc in procs.items()}
    finally:  # on failure: let each job stop its own Ray cleanly before killing it
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return SimpleNamespace(
        tmp=tmp, store=store, pirate=results["pirate"]["adapter_uri"], pirate_job=results["pirate"]["job_id"],
        labels=results["labels"]["adapter_uri"], sentiment_test=test, pirate_eval=pirate_eval,
    )


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.strip().splitlines()]


# --------------------------------------------------------------------------- try


@pytest.mark.integration
def test_try_adapter_changes_text_and_scale_zero_is_the_base(trained, capsys):
    prompts = ["Tell me about the treasure.", "How is your parrot?"]
    rc, out, err = run_cli(capsys, "try", trained.pirate, "--prompt", prompts[0], "--prompt", prompts[1],
                           "--scale", "0", "1", "--max-new-tokens", "16", "--json")
    assert rc == 0, err
    records = json_lines(out)
    assert [r["prompt"] for r in records] == prompts
    for r in records:
        zero, one = r["outputs"]
        assert (zero["scale"], one["scale"]) == (0.0, 1.0)
        assert zero["token_ids"] == r["base_token_ids"] and zero["text"] == r["base"]
        assert one["token_ids"] != r["base_token_ids"] and one["text"] != r["base"]
        assert len(r["base_token_ids"]) == 16  # the random base never emits eos
        # The random base emits unused vocabulary rows; the adapter learned English bytes.
        assert sum(ch.isalpha() or ch == " " for ch in one["text"]) >= 0.8 * len(one["text"]) > 0
        assert "<2" in r["base"]


@pytest.mark.integration
def test_try_by_job_id_prints_a_table(trained, capsys):
    rc, out, err = run_cli(capsys, "try", trained.pirate_job, "--store", str(trained.store), "--prompt",
                           "Say something about your ship.", "--scale", "0.5", "--max-new-tokens", "8")
    assert rc == 0, err
    assert "Say something" in out and "base" in out and "×0.5" in out and "tiny-llama" in out


@pytest.mark.integration
def test_several_adapters_share_one_base_and_do_not_interfere(trained, capsys):
    review = "Review: What a superb view :)"
    rc, out, err = run_cli(capsys, "try", trained.pirate, "--adapter", trained.labels, "--prompt", review,
                           "--prompt", "Review: Honestly, dreadful food :(", "--max-new-tokens", "9",
                           "--json")
    assert rc == 0, err
    both = json_lines(out)
    assert [o["uri"] for o in both[0]["outputs"]] == [trained.pirate, trained.labels]
    # The label adapter decides right (the labels' first byte), greedy, in its own column.
    assert both[0]["outputs"][1]["text"][:1] == "p" and both[1]["outputs"][1]["text"][:1] == "n", both
    rc, out, err = run_cli(capsys, "try", trained.labels, "--prompt", review, "--max-new-tokens", "9", "--json")
    assert rc == 0, err
    alone = json_lines(out)[0]
    assert alone["outputs"][0]["token_ids"] == both[0]["outputs"][1]["token_ids"]


# --------------------------------------------------------------------------- eval


@pytest.mark.integration
def test_eval_loss_drops_scale_zero_is_exactly_the_base_and_results_are_saved(trained, capsys):
    rc, out, err = run_cli(capsys, "eval", trained.pirate, "--data", str(trained.pirate_eval),
                           "--scale", "0", "0.5", "1", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["format"] == "chat" and s["examples"] == 48 and s["labels"] is None and s["seq_len"] == 128
    base, zero, half, one = s["results"]
    assert base["model"] == "base" and [r["scale"] for r in (zero, half, one)] == [0.0, 0.5, 1.0]
    assert zero["loss"] == base["loss"] and zero["loss_delta"] == 0.0  # exactly, not approximately
    assert one["loss"] < base["loss"] - 0.3, (base["loss"], one["loss"])
    assert one["loss"] < half["loss"] < base["loss"]
    for r in s["results"]:
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
        assert r["label_tokens"] == base["label_tokens"] > 1000
    # Written beside adapter/ in the job directory; the published adapter is untouched.
    job_dir = Path(trained.pirate).parent
    assert s["saved"] == {trained.pirate_job: str(job_dir / "eval" / "pirate_heldout.json")}
    saved = json.loads((job_dir / "eval" / "pirate_heldout.json").read_text())
    assert saved["base"]["loss"] == base["loss"] and [r["loss"] for r in saved["results"]] == [
        zero["loss"], half["loss"], one["loss"]]
    assert sorted(p.name for p in Path(trained.pirate).iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "lorafarm.json"]


@pytest.mark.integration
def test_eval_of_a_pulled_copy_writes_inside_it_and_the_copy_stays_valid(trained, capsys, tmp_path):
    from lorafarm.adapter.save import pull

    local = tmp_path / "copy"
    pull(trained.pirate, local)
    rc, out, err = run_cli(capsys, "eval", str(local), "--data", str(trained.pirate_eval), "--max-examples", "8",
                           "--name", "quick", "--json")
    assert rc == 0, err
    s = json.loads(out)
    assert s["saved"] == {trained.pirate_job: str(local / "eval" / "quick.json")}
    assert (local / "eval" / "quick.json").exists()
    pull(str(local), tmp_path / "again")  # files outside the manifest do not invalidate it
    assert not (tmp_path / "again" / "eval").exists()


@pytest.mark.integration
def test_labelled_set_accuracy_adapter_beats_base(trained, capsys):
    rc, out, err = run_cli(capsys, "eval", trained.labels, "--data", str(trained.sentiment_test), "--json",
                           "--no-save")
    assert rc == 0, err
    s = json.loads(out)
    assert s["labels"] == ["negative", "positive"] and s["examples"] == 60 and s["saved"] == {}
    base, adapter = s["results"]
    assert adapter["accuracy"] >= 0.9, adapter
    assert adapter["accuracy"] >= base["accuracy"] + 0.3, (base, adapter)
    assert adapter["loss"] < base["loss"]
    assert adapter["accuracy_delta"] == pytest.approx(adapter["accuracy"] - base["accuracy"])
    # The table form names the labels and both rows.
    rc, out, err = run_cli(capsys, "eval", trained.labels, "--data", str(trained.sentiment_test), "--no-save")
    assert rc == 0, err
    assert "accuracy" in out and '"positive"' in out and "base" in out


# --------------------------------------------------------------------------- merge --scale


@pytest.mark.integration
def test_merge_at_a_scale_matches_the_scaled_adapter(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from lorafarm.adapter.merge import merge_adapter
    from lorafarm.use.load import session

    ids = torch.randint(4, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    merged = {}
    for scale in (0.0, 0.5):
        out = merge_adapter(trained.pirate, str(tmp_path / f"merged-{scale}"), scale=scale)
        m = AutoModelForCausalLM.from_pretrained(out).eval()
        with torch.no_grad():
            merged[scale] = m(ids).logits
    with session([trained.pirate], device="cpu") as s, torch.no_grad():
        with s.active(None):
            base = s.model(ids).logits
        with s.active(s.adapters[0], 0.5):
            half = s.model(ids).logits
        with s.active(s.adapters[0], 1.0):
            full = s.model(ids).logits
    torch.testing.assert_close(merged[0.0], base, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged[0.5], half, rtol=1e-4, atol=1e-4)
    assert (half - base).abs().max() > 1e-3 and (full - half).abs().max() > 1e-3


# --------------------------------------------------------------------------- refusals


@pytest.mark.integration
def test_adapter_on_a_base_of_other_shapes_is_refused_naming_both(trained, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorafarm.model.tiny import TINY_CONFIG, build_tokenizer

    other = tmp_path / "narrow-llama"
    LlamaForCausalLM(LlamaConfig(**{**TINY_CONFIG, "hidden_size": 64, "intermediate_size": 128})).save_pretrained(other)
    build_tokenizer().save_pretrained(other)
    proc = subprocess.run([*CLI, "try", trained.pirate, "--base", str(other), "--prompt", "hi"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env())
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    err = " ".join(proc.stderr.split())
    assert "does not fit base" in err and str(other) in err and "'tiny-llama'" in err, err
    assert "28 of 28 adapted layers differ" in err, err
    assert "model.layers.0.mlp.down_proj: adapter expects in=256 out=128, base has in=128 out=64" in err, err

    from lorafarm.adapter.merge import merge_adapter
    from lorafarm.errors import AdapterError

    with pytest.raises(AdapterError, match="does not fit base") as e:
        merge_adapter(trained.pirate, str(tmp_path / "merged"), base=str(other))
    assert "'tiny-llama'" in str(e.value) and str(other) in str(e.value)


@pytest.mark.integration
def test_missing_or_incomplete_adapter_is_refused_as_in_pull(trained, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "eval", str(tmp_path / "nothing"), "--data", str(trained.pirate_eval))
    assert rc == 1 and "no adapter here" in err and "lorafarm.json" in err

    broken = tmp_path / "broken"
    shutil.copytree(trained.pirate, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"half an adapter")
    rc, _, err = run_cli(capsys, "try", str(broken), "--prompt", "hi")
    assert rc == 1 and "incomplete or corrupt" in err and "adapter_model.safetensors" in err

    (broken / "adapter_model.safetensors").unlink()
    rc, _, err = run_cli(capsys, "eval", str(broken), "--data", str(trained.pirate_eval))
    assert rc == 1 and "adapter_model.safetensors: missing" in " ".join(err.split())

    rc, _, err = run_cli(capsys, "try", "no-such-job-20990101-000000-abcd", "--store", str(trained.store),
                         "--prompt", "hi")
    assert rc == 1 and "not found" in err


# --------------------------------------------------------------------------- fast unit tests


def test_usage_errors_exit_2(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "try", str(tmp_path), "--scale", "1")
    assert rc == 2 and "--prompt" in err
    rc, _, err = run_cli(capsys, "try", "--prompt", "hi")
    assert rc == 2 and "no adapter given" in err
    rc, _, err = run_cli(capsys, "eval", str(tmp_path), "--data", "x.jsonl", "--batch-size", "0")
    assert rc == 2 and "--batch-size 0" in err
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path)])  # --data is required
    assert e.value.code == 2


def test_label_set_detection():
    from lorafarm.errors import SpecError
    from lorafarm.use.evaluate import label_set

    rows = sentiment_rows(0, 10)
    assert label_set(rows, "prompt_completion", "auto") == ["negative", "positive"]
    assert label_set(rows, "prompt_completion", "none") is None
    assert label_set(rows, "prompt_completion", "positive,negative") == ["positive", "negative"]
    free_text = [{"prompt": "p", "completion": f"answer {i}"} for i in range(10)]
    assert label_set(free_text, "prompt_completion", "auto") is None
    assert label_set(rows, "chat", "auto") is None
    with pytest.raises(SpecError, match="'negative'"):
        label_set(rows, "prompt_completion", "positive,neutral")
    with pytest.raises(SpecError, match="prompt_completion"):
        label_set(rows, "text", "a,b")


def test_prompts_are_rendered_as_training_saw_them():
    """The rendered prompt is exactly the training encoding up to the first trained token."""
    from lorafarm.data.formats import IGNORE, encode
    from lorafarm.model.tiny import build_tokenizer
    from lorafarm.use.generate import render_prompt

    tok = build_tokenizer()
    cases = [
        ("chat", {"messages": [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"},
                               {"role": "assistant", "content": "Arr."}]},
         [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"}]),
        ("chat", {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Arr."}]}, "Hi?"),
        ("prompt_completion", {"prompt": "Review: ok :)", "completion": "positive"}, "Review: ok :)"),
    ]
    for fmt, example, prompt in cases:
        enc = encode(example, fmt, tok, 512)
        first_target = next(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
        assert render_prompt(prompt, fmt, tok) == enc.input_ids[: first_target + 1], fmt


def test_results_go_beside_the_adapter_in_a_job_dir_else_inside(tmp_path):
    from lorafarm.use.evaluate import default_name, results_uri

    job = tmp_path / "demo" / "job-1"
    (job / "adapter").mkdir(parents=True)
    (job / "spec.yaml").write_text("tenant: demo\n")
    assert results_uri(str(job / "adapter"), "x") == str(job / "eval" / "x.json")
    plain = tmp_path / "adapter"
    plain.mkdir()
    assert results_uri(str(plain), "x") == str(plain / "eval" / "x.json")
    assert results_uri("s3://b/p/my-adapter", "x") == "s3://b/p/my-adapter/eval/x.json"
    assert default_name("s3://b/data/Held Out.v2.jsonl") == "held-out.v2"


def test_prompts_file_lines_and_jsonl(tmp_path):
    from lorafarm.errors import SpecError
    from lorafarm.use.generate import load_prompts

    f = tmp_path / "p.txt"
    f.write_text("Tell me about the sea.\n\n{not json\n")
    assert load_prompts(str(f)) == ["Tell me about the sea.", "{not json"]
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "arr"}]}) + "\n")
    assert load_prompts(str(f)) == ["a", "b", [{"role": "user", "content": "hi"}]]
    f.write_text(json.dumps({"question": "a"}) + "\n")
    with pytest.raises(SpecError, match="line 1"):
        load_prompts(str(f))
    with pytest.raises(SpecError, match="not found"):
        load_prompts(str(tmp_path / "missing.txt"))
