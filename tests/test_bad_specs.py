"""Every bad spec stopped at the door (issue 14): ``validate``, ``run`` and ``submit`` run the
same checks — schema, numbers finite and in range, the spec file itself (UTF-8, one mapping,
no key twice), then the preflight (data readable with the right columns, base and target
modules found, a sample encodes with labels) — before anything is queued, started or written.

Each bad input, through the real CLI in a child process: exit 2, a one-line message naming the
field or file, no traceback, no Ray imported (so none started) and the store left empty. The
CLI runs all cases of one command in one child (a driver calling ``lorafarm.cli.main.main``
per case, its output captured per case), so that torch and transformers load once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, quickstart_spec, with_field, write_small_chat_dataset

from lorafarm.spec import load_tenants, resume_differences, validate_spec
from lorafarm.tenants import TenantsError

DRIVER = """
import contextlib, io, json, sys
from lorafarm.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue(), "ray": "ray" in sys.modules})
print(json.dumps(results))
"""


def run_cli(cases: list[list[str]], store: Path, timeout: float = 600) -> list[dict[str, Any]]:
    """Each argv of ``cases`` through ``lorafarm`` in one child process, in order."""
    env = {**os.environ, "LORAFARM_STORE": str(store), "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# -- the cases ---------------------------------------------------------------------------------


def _set(spec: dict, dotted: str, value: Any) -> dict:
    return with_field(spec, dotted, value)


class Case:
    """A bad input: the spec file's bytes (or a path of its own), ``--set`` overrides, the text
    the one error line must start with (after ``error: ``), and words the message must hold."""

    def __init__(self, id: str, *, spec: Any = None, raw: bytes | None = None, path: str | None = None,
                 sets: tuple[str, ...] = (), starts: str, holds: tuple[str, ...] = ()):
        self.id, self.spec, self.raw, self.path, self.sets = id, spec, raw, path, sets
        self.starts, self.holds = starts, holds

    def argv(self, command: str, tmp: Path, good: dict) -> list[str]:
        if self.path is not None:
            path = self.path.format(tmp=tmp)
        else:
            path = str(tmp / f"{self.id}.yaml")
            data = self.raw if self.raw is not None else yaml.safe_dump(self.spec(good)).encode()
            Path(path).write_bytes(data)
        argv = [command, path]
        for s in self.sets:
            argv += ["--set", s.format(tmp=tmp)]
        return argv


GOOD_TEXT = "tenant: demo\nname: bad\ndataset: {uri: data.jsonl}\n"

# the spec file itself
FILE_CASES = [
    Case("not-utf8", raw=b"tenant: demo\nname: caf\xe9\n", starts="{path}: not UTF-8 text",
         holds=("offset 22", "save it as UTF-8")),
    Case("utf16", raw="tenant: demo\n".encode("utf-16"), starts="{path}: not UTF-8 text", holds=("offset 0",)),
    Case("duplicate-tenant", raw=b"tenant: demo\nname: bad\ntenant: other\ndataset: {uri: x}\n",
         starts="{path}: key `tenant` is written twice (line 1 and line 3)", holds=("keep one",)),
    Case("duplicate-nested", raw=b"tenant: demo\nname: bad\ntraining:\n  max_steps: 4\n  max_steps: 5\n"
         b"dataset: {uri: x}\n", starts="{path}: key `max_steps` is written twice (line 4 and line 5)"),
    Case("a-list", raw=b"- tenant: demo\n- name: bad\n", starts="{path}: the spec must be a YAML mapping",
         holds=("got list",)),
    Case("a-string", raw=b"just some words\n", starts="{path}: the spec must be a YAML mapping", holds=("got str",)),
    Case("empty", raw=b"", starts="{path}: the spec is empty", holds=("jobs/quickstart.yaml",)),
    Case("only-comments", raw=b"# tenant: demo\n\n", starts="{path}: the spec is empty"),
    Case("yaml-syntax", raw=b"tenant: demo\nname: [unclosed\n", starts="{path}: YAML syntax error at line",
         holds=("fix the YAML",)),
    Case("binary-garbage", raw=bytes(range(256)) * 4, starts="{path}: not UTF-8 text", holds=("offset 128",)),
    Case("missing-file", path="{tmp}/no-such.yaml", starts="{path}: cannot read the spec file (no such file)",
         holds=("check the path",)),
    Case("a-directory", path="{tmp}", starts="{path}: is a directory, not a spec file"),
]

# numbers (and lists) that validate elsewhere but would break every job
NUMBER_CASES = [
    Case("alpha-inf", spec=lambda g: _set(g, "lora.alpha", float("inf")), starts="lora.alpha: inf is not a finite number"),
    Case("alpha-nan", spec=lambda g: _set(g, "lora.alpha", float("nan")), starts="lora.alpha: nan is not a finite number"),
    Case("alpha-huge", spec=lambda g: _set(g, "lora.alpha", 1e30), starts="lora.alpha: 1e+30 is out of range",
         holds=("<= 4096",)),
    Case("alpha-inf-set", spec=lambda g: g, sets=("lora.alpha=.inf",), starts="lora.alpha: inf is not a finite number"),
    Case("dropout-one", spec=lambda g: _set(g, "lora.dropout", 1.0), starts="lora.dropout: 1.0 is out of range",
         holds=("< 1",)),
    Case("dropout-negative", spec=lambda g: _set(g, "lora.dropout", -0.1), starts="lora.dropout: -0.1 is out of range"),
    Case("targets-empty", spec=lambda g: _set(g, "lora.target_modules", []), starts="lora.target_modules: is empty",
         holds=("e.g. [q_proj, v_proj], or all-linear",)),
    Case("targets-blank", spec=lambda g: _set(g, "lora.target_modules", [" ", "q_proj"]),
         starts="lora.target_modules[0]: ' ' is not a module name"),
    Case("lr-inf", spec=lambda g: _set(g, "training.learning_rate", float("inf")),
         starts="training.learning_rate: inf is not a finite number"),
    Case("lr-zero", spec=lambda g: _set(g, "training.learning_rate", 0), starts="training.learning_rate: 0 is out of range",
         holds=("> 0",)),
    Case("lr-negative", spec=lambda g: g, sets=("training.learning_rate=-0.001",),
         starts="training.learning_rate: -0.001 is out of range"),
    Case("weight-decay-negative", spec=lambda g: _set(g, "training.weight_decay", -0.1),
         starts="training.weight_decay: -0.1 is out of range"),
    Case("weight-decay-inf", spec=lambda g: _set(g, "training.weight_decay", float("inf")),
         starts="training.weight_decay: inf is not a finite number"),
    Case("weight-decay-huge", spec=lambda g: _set(g, "training.weight_decay", 50.0),
         starts="training.weight_decay: 50.0 is out of range", holds=("<= 1",)),
    Case("grad-norm-nan", spec=lambda g: _set(g, "training.max_grad_norm", float("nan")),
         starts="training.max_grad_norm: nan is not a finite number"),
    Case("grad-norm-negative", spec=lambda g: _set(g, "training.max_grad_norm", -1.0),
         starts="training.max_grad_norm: -1.0 is out of range"),
    Case("warmup-negative", spec=lambda g: _set(g, "training.warmup_steps", -1),
         starts="training.warmup_steps: -1 is out of range"),
    Case("epochs-inf", spec=lambda g: _set(_set(g, "training.max_steps", None), "training.epochs", float("inf")),
         starts="training.epochs: inf is not a finite number"),
    Case("epochs-zero", spec=lambda g: _set(_set(g, "training.max_steps", None), "training.epochs", 0),
         starts="training.epochs: 0 is out of range"),
    Case("max-steps-huge", spec=lambda g: _set(g, "training.max_steps", 10**12),
         starts="training.max_steps: 1000000000000 is out of range"),
    Case("seed-huge", spec=lambda g: _set(g, "training.seed", 2**70), starts="training.seed:", holds=("out of range",)),
    Case("eval-fraction-nan", spec=lambda g: _set(g, "dataset.eval_fraction", float("nan")),
         starts="dataset.eval_fraction: nan is not a finite number"),
    Case("cpus-inf", spec=lambda g: _set(g, "resources.cpus_per_worker", float("inf")),
         starts="resources.cpus_per_worker: inf is not a finite number"),
    Case("gpus-nan", spec=lambda g: _set(g, "resources.gpus_per_worker", float("nan")),
         starts="resources.gpus_per_worker: nan is not a finite number"),
    Case("checkpoint-negative", spec=lambda g: _set(g, "training.checkpoint_every_steps", -5),
         starts="training.checkpoint_every_steps: -5 is out of range"),
]

# well-formed specs that cannot run: the preflight's problems
PREFLIGHT_CASES = [
    Case("data-missing", spec=lambda g: _set(g, "dataset.uri", "/nonexistent/pirates.jsonl"), starts="dataset.uri:",
         holds=("/nonexistent/pirates.jsonl",)),
    Case("data-wrong-columns", spec=lambda g: _set(g, "dataset.uri", str(ROOT / "jobs/data/pirate_text.jsonl")),
         starts="dataset.uri:", holds=("messages",)),
    Case("data-garbage", spec=lambda g: _set(g, "dataset.uri", "{tmp}/garbage.jsonl"), starts="dataset.uri:",
         holds=("garbage.jsonl",)),
    Case("base-missing", spec=lambda g: _set(g, "base_model", "/nonexistent/base-model"), starts="",
         holds=("/nonexistent/base-model",)),
    Case("base-broken-config", spec=lambda g: _set(g, "base_model", "{tmp}/badbase"), starts="base_model: ",
         holds=("badbase: cannot build the model from its config", "config.json")),
    Case("target-missing", spec=lambda g: _set(g, "lora.target_modules", ["q_proj", "qkv_fused"]),
         starts="lora.target_modules: qkv_fused not found in the base model", holds=("q_proj",)),
    Case("labels-all-cut", spec=lambda g: _set(g, "training.seq_len", 8), starts="dataset: every example loses all",
         holds=("seq_len",)),
    Case("batch-too-big", spec=lambda g: _set(_set(g, "training.global_batch_size", 4096), "training.micro_batch_size",
                                             4), starts="training.global_batch_size: 4096 is larger than"),
]


def _expand(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.format(tmp=tmp)
    if isinstance(value, dict):
        return {k: _expand(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, tmp) for v in value]
    return value


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    write_small_chat_dataset(tmp / "chat.jsonl", rows=48)
    (tmp / "garbage.jsonl").write_bytes(b"\x00\x01\xffnot json at all\n{\"messages\": 3\n")
    (tmp / "badbase").mkdir()
    (tmp / "badbase" / "config.json").write_text('{"model_type": "llama", "hidden_size": -5}')
    return tmp


def _good(tmp: Path) -> dict:
    return quickstart_spec("demo", "bad", tmp / "chat.jsonl", training={"max_steps": 4},
                           resources={"workers": 1}, zero={"stage": "auto"})


def _argvs(command: str, cases: list[Case], tmp: Path) -> list[list[str]]:
    good = _good(tmp)
    out = []
    for case in cases:
        if case.spec is not None:
            spec = case.spec
            case = Case(case.id, spec=lambda g, s=spec: _expand(s(g), tmp), sets=case.sets, starts=case.starts,
                        holds=case.holds)
        out.append(case.argv(command, tmp / command, good))
    return out


ALL = FILE_CASES + NUMBER_CASES + PREFLIGHT_CASES


@pytest.fixture(scope="module")
def results(workdir) -> dict[str, dict[str, Any]]:
    """Every case through ``validate`` and ``run`` (two child processes), keyed ``command/id``."""
    out = {}
    for command in ("validate", "run"):
        (workdir / command).mkdir()
        store = workdir / f"store-{command}"
        argvs = _argvs(command, ALL, workdir)
        if command == "run":
            argvs = [[*a, "--store", str(store)] for a in argvs]
        for case, argv, res in zip(ALL, argvs, run_cli(argvs, store), strict=True):
            out[f"{command}/{case.id}"] = {**res, "argv": argv, "store": files_under(store)}
    return out


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_bad_input_is_refused_at_the_door(results, workdir, command, case):
    res = results[f"{command}/{case.id}"]
    path = res["argv"][1]
    err = res["err"]
    assert res["rc"] == 2, f"exit {res['rc']}: {err}{res['out']}"
    assert "Traceback" not in err + res["out"] and "unexpected" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), err  # only one-line problems
    expected = "error: " + case.starts.format(path=path)
    assert any(line.startswith(expected) for line in lines), f"no line starting {expected!r}:\n{err}"
    for word in case.holds:
        assert word in err, f"{word!r} not in:\n{err}"
    assert all(" — " in line for line in lines), err  # every line says how to fix it
    assert res["ray"] is False, "Ray was imported: a refused spec must start nothing"
    assert res["store"] == [], f"the store was written: {res['store']}"


def test_every_problem_at_once(workdir):
    """Schema problems all together; then preflight problems all together (data and model)."""
    tmp = workdir
    schema_bad = _set(_set(_set(_good(tmp), "lora.alpha", float("inf")), "training.learning_rate", 0),
                      "lora.target_modules", [])
    preflight_bad = _set(_set(_good(tmp), "dataset.uri", "/nonexistent/d.jsonl"), "lora.target_modules", ["nope_proj"])
    (tmp / "at-once").mkdir()
    paths = []
    for name, spec in (("schema", schema_bad), ("preflight", preflight_bad)):
        p = tmp / "at-once" / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec))
        paths.append(str(p))
    store = tmp / "store-at-once"
    schema, preflight = run_cli([["run", paths[0], "--store", str(store)], ["run", paths[1], "--store", str(store)]],
                                store)
    assert schema["rc"] == 2 and preflight["rc"] == 2
    assert [line.split(":")[0] for line in schema["err"].splitlines()] == ["error"] * 3
    for field in ("lora.alpha:", "training.learning_rate:", "lora.target_modules:"):
        assert f"error: {field}" in schema["err"], schema["err"]
    assert "error: dataset.uri:" in preflight["err"] and "error: lora.target_modules: nope_proj" in preflight["err"]
    assert files_under(store) == [] and not schema["ray"] and not preflight["ray"]


# -- intervals longer than the run: capped, with a notice -----------------------------------------


def test_short_run_of_the_quickstart_is_capped_not_refused(tmp_path):
    """`--set training.max_steps=4` on jobs/quickstart.yaml (warm-up 5, eval every 20, checkpoint
    every 50): runnable, each cap a notice on stderr and in `validate --json`'s `notices`."""
    quick = str(ROOT / "jobs/quickstart.yaml")
    human, as_json = run_cli([["validate", quick, "--set", "training.max_steps=4"],
                              ["validate", quick, "--set", "training.max_steps=4", "--json"]], tmp_path / "store")
    assert human["rc"] == 0 and as_json["rc"] == 0, human["err"] + as_json["err"]
    notices = json.loads(as_json["out"].strip().splitlines()[-1])["notices"]
    assert [n.split(":")[0] for n in notices] == ["training.warmup_steps", "training.eval_every_steps",
                                                  "training.checkpoint_every_steps"]
    assert "capped at 3" in notices[0] and "capped at 4" in notices[1] and "capped at 4" in notices[2]
    assert [line for line in human["err"].splitlines() if line.startswith("notice: ")] == \
        [f"notice: {n}" for n in notices]
    assert "ok: the spec is runnable" in human["err"] and "notices" not in human["err"]
    assert "error" not in human["err"]


def test_caps_reach_the_spec_the_job_runs():
    """The preflight returns the capped spec (what run/submit send on); the defaults it leaves alone."""
    from lorafarm.preflight import check

    raw = quickstart_spec("demo", "cap", ROOT / "jobs/data/pirate_chat.jsonl", training={"max_steps": 4})
    spec, report = check(validate_spec(raw))
    t = spec.training
    assert (t.warmup_steps, t.eval_every_steps, t.checkpoint_every_steps) == (3, 4, 4)
    assert report["total_steps"] == 4 and len(report["notices"]) == 3
    raw["training"].pop("checkpoint_every_steps")
    raw["training"].update(warmup_steps=0, eval_every_steps=0)
    spec, report = check(validate_spec(raw))
    assert spec.training.checkpoint_every_steps == 50 and report["notices"] == []  # the default: no notice


def test_remote_code_is_not_run_by_the_preflight():
    """trust_remote_code: the scheduler decides (the tenants file); the client never runs the base's code."""
    from lorafarm.preflight import check

    raw = quickstart_spec("demo", "trust", ROOT / "jobs/data/pirate_chat.jsonl", training={"max_steps": 100})
    _, report = check(validate_spec({**raw, "trust_remote_code": True}))
    assert report["notices"][0].startswith("trust_remote_code: the base model's own code is not run")
    assert "adapted_modules" not in report


def test_caps_with_epochs_use_the_counted_steps(tmp_path):
    from lorafarm.preflight import check
    from lorafarm.spec import steps_per_epoch, total_steps

    data = write_small_chat_dataset(tmp_path / "c.jsonl", rows=48)
    raw = quickstart_spec("demo", "cap", data, training={"max_steps": None, "epochs": 1.0, "warmup_steps": 100,
                                                         "eval_every_steps": 100})
    spec, report = check(validate_spec(raw))
    steps = report["total_steps"]
    assert steps == total_steps(spec.training, steps_per_epoch(48 - report["all_masked_examples"], 16))
    assert spec.training.warmup_steps == steps - 1 and spec.training.eval_every_steps == steps


# -- run --resume: a changed field is named, before Ray starts -------------------------------------


def _fake_checkpoint(store: Path, spec) -> Path:
    """A complete checkpoint (marker last) for ``spec``'s job ``resumed``: what the recipe writes."""
    from lorafarm.spec import resume_digest
    from lorafarm.worker.checkpoints import FORMAT, MARKER

    step = store / spec.tenant / "resumed" / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"step": 2, "spec": spec.model_dump(mode="json")}))
    (step / MARKER).write_text(json.dumps({"format": FORMAT, "step": 2, "world_size": 1, "files": {},
                                           "resume_digest": resume_digest(spec)}))
    return step


def test_resume_with_changed_fields_names_them(workdir, tmp_path):
    from lorafarm.cli.paths import absolutize_local_paths
    from lorafarm.preflight import check

    good = _good(workdir)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(good))
    spec, _ = check(absolutize_local_paths(validate_spec(good), path))
    store = tmp_path / "store"
    _fake_checkpoint(store, spec)
    before = files_under(store)
    changed, missing = run_cli([
        ["run", str(path), "--store", str(store), "--resume", "resumed", "--set", "training.learning_rate=0.001",
         "--set", "lora.r=4"],
        ["run", str(path), "--store", str(store), "--resume", "nosuchjob"],
    ], store)
    assert changed["rc"] == 2 and missing["rc"] == 2, changed["err"] + missing["err"]
    errors = [line for line in changed["err"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, changed["err"]
    line = errors[0]
    assert line.startswith("error: --resume: resumed's checkpoint step-2 was made with other values of "), line
    assert "lora.r: 16 → 4" in line and "training.learning_rate: 0.002 → 0.001" in line
    assert "run it as a new job" in line
    assert "has no checkpoint" in missing["err"]
    assert not changed["ray"] and not missing["ray"] and "Traceback" not in changed["err"] + missing["err"]
    assert files_under(store) == before


def test_resume_differences_is_pure_and_ignores_free_fields():
    base = validate_spec(_good(Path("/tmp")))
    old = base.model_dump(mode="json")
    moved = validate_spec(_set(_set(_set(_good(Path("/tmp")), "resources.workers", 2), "zero.stage", 3),
                               "training.micro_batch_size", 1))
    assert resume_differences(old, moved) == []
    changed = validate_spec(_set(_set(_good(Path("/tmp")), "training.seed", 7), "dataset.format", "text"))
    assert resume_differences(old, changed) == ['dataset.format: "chat" → "text"', "training.seed: 0 → 7"]


# -- the tenants file: the same rules -------------------------------------------------------------

TENANT_CASES = [
    ("tenants: {default: {weight: .inf}}\n", "tenants.default.weight: inf is not a finite number"),
    ("tenants: {default: {weight: .nan}}\n", "tenants.default.weight: nan is not a finite number"),
    ("tenants: {default: {weight: -2}}\n", "tenants.default.weight: -2 is out of range"),
    ("tenants: {default: {weight: 1.0e+12}}\n", "tenants.default.weight: 1000000000000.0 is out of range"),
    ("tenants: {default: {quota: {gpus: .inf}}}\n", "tenants.default.quota.gpus: inf is not a finite number"),
    ("tenants: {default: {quota: {cpus: -1}}}\n", "tenants.default.quota.cpus: -1 is out of range"),
    ("tenants: {default: {quota: {workers: -1}}}\n", "tenants.default.quota.workers: -1 is out of range"),
    ("tenants: {default: {guaranteed: {gpus: .nan}}}\n", "tenants.default.guaranteed.gpus: nan is not a finite"),
    ("policy: {aging_per_hour: .inf}\ntenants: {default: {}}\n", "policy.aging_per_hour: inf is not a finite number"),
    ("policy: {aging_per_hour: -1}\ntenants: {default: {}}\n", "policy.aging_per_hour: -1 is out of range"),
    ("priority_classes: {normal: 99999999999999}\ntenants: {default: {}}\n", "priority_classes.normal: 99999999999999"),
    ("tenants:\n  default: {}\n  acme: {weight: 1}\n  acme: {weight: 2}\n",
     "{path}: key `acme` is written twice (line 3 and line 4)"),
    ("", "{path}: the tenants file is empty"),
    ("- a\n", "{path}: the tenants file must be a YAML mapping"),
]


@pytest.mark.parametrize(("text", "starts"), TENANT_CASES, ids=[f"t{i}" for i in range(len(TENANT_CASES))])
def test_bad_tenants_file_is_refused(tmp_path, text, starts):
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    with pytest.raises(TenantsError) as info:
        load_tenants(path)
    assert any(p.startswith(starts.format(path=path)) for p in info.value.problems), info.value.problems
    assert all(" — " in p for p in info.value.problems)


def test_bad_tenants_file_through_the_cli(tmp_path):
    """Not UTF-8, a duplicate key and an infinite weight, through a command that reads the file."""
    files = {"binary.yaml": b"tenants:\n  default: {weight: \xff}\n",
             "dup.yaml": b"tenants: {default: {}}\ntenants: {acme: {}}\n",
             "inf.yaml": b"tenants: {default: {weight: .inf}}\n"}
    argvs = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        argvs.append(["simulate", "--gpus", "4", "--generate", "2", "--tenants", str(tmp_path / name)])
    binary, dup, inf = run_cli(argvs, tmp_path / "store")
    for res in (binary, dup, inf):
        assert res["rc"] == 2 and "Traceback" not in res["err"] and "unexpected" not in res["err"], res["err"]
    assert f"{tmp_path / 'binary.yaml'}: not UTF-8 text (byte 0xff at offset 29)" in binary["err"]
    assert "key `tenants` is written twice (line 1 and line 2)" in dup["err"]
    assert "tenants.default.weight: inf is not a finite number" in inf["err"]


# -- submit: nothing queued; the service still serves ---------------------------------------------


@pytest.mark.integration
def test_refused_submits_queue_nothing_and_a_good_one_runs_capped(serve_cluster, tmp_path):
    head = serve_cluster("tenants: {default: {weight: 1}}\n", 4)
    data = head.tmp / "small.jsonl"
    good = quickstart_spec("demo", "door", data, training={"max_steps": 60}, resources={"workers": 1},
                           zero={"stage": "auto"})
    bad = {
        "alpha-inf": (_set(good, "lora.alpha", float("inf")), "lora.alpha: inf is not a finite number"),
        "no-targets": (_set(good, "lora.target_modules", []), "lora.target_modules: is empty"),
        "data-missing": (_set(good, "dataset.uri", str(head.tmp / "missing.jsonl")), "dataset.uri:"),
        "target-missing": (_set(good, "lora.target_modules", ["qkv_fused"]), "lora.target_modules: qkv_fused"),
    }
    for name, (spec, starts) in bad.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec))
        proc = head.lorafarm("submit", str(p), timeout=300)
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}: {proc.stderr[-2000:]}"
        assert f"error: {starts}" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    dup = tmp_path / "dup.yaml"
    dup.write_text(yaml.safe_dump(good) + "tenant: other\n")
    proc = head.lorafarm("submit", str(dup), timeout=300)
    assert proc.returncode == 2 and "key `tenant` is written twice" in proc.stderr, proc.stderr
    assert head.lorafarm_json("list") == []  # nothing was queued
    ok = tmp_path / "good.yaml"
    ok.write_text(yaml.safe_dump(good))
    proc = head.lorafarm("submit", str(ok), "--set", "training.max_steps=4", "--wait", "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notice: training.warmup_steps: 5 is not below the run's 4 steps — capped at 3" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "SUCCEEDED"
    ran = yaml.safe_load(Path(head.store, "demo", summary["job_id"], "spec.yaml").read_text())["training"]
    assert (ran["max_steps"], ran["warmup_steps"], ran["eval_every_steps"]) == (4, 3, 4)  # the worker's values
