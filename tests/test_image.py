"""The container image (deploy/Dockerfile), checked without building it: the file parses, every
version is pinned and agrees with pyproject.toml and the chart, it runs as non-root, and the
entry point it installs and runs is the console script pyproject declares. Plus the example
RayJob (deploy/examples/rayjob.yaml), validated like the chart's objects.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REQUIREMENTS = ROOT / "deploy" / "requirements.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
                "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR", "MAINTAINER"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, `\\` continuations joined. Raises
    ValueError on an unknown instruction or a dangling continuation."""
    out, buf = [], ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continued instruction are skipped
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.strip().partition(" ")
        if word.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {n}: unknown instruction {word!r}")
        out.append((word.upper(), " ".join(args.split())))
        buf = ""
    if buf:
        raise ValueError("the file ends inside a continued instruction")
    return out


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(DOCKERFILE.read_text())


def args_of(instructions) -> dict[str, str]:
    """Global and stage ARG defaults (ARG NAME=value)."""
    defaults = {}
    for kind, args in instructions:
        if kind == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults.setdefault(name, value)
    return defaults


def expand(s: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], s)


def requirement_pins() -> dict[str, Version]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", line)
        assert m, f"requirements.txt: {line!r} is not pinned as name==version"
        pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


# ---------------------------------------------------------------- parsing and pins
def test_parser_refuses_garbage():
    with pytest.raises(ValueError, match="unknown instruction"):
        parse_dockerfile("FROM x\nRUNN echo\n")
    with pytest.raises(ValueError, match="continued"):
        parse_dockerfile("FROM x\nRUN echo \\\n")


def test_dockerfile_parses_into_stages(instructions):
    froms = [a for k, a in instructions if k == "FROM"]
    assert len(froms) == 3
    stages = {a.split(" AS ")[1]: a.split(" AS ")[0] for a in froms}
    assert set(stages) == {"base-cpu", "base-gpu", "lorafarm"}
    assert stages["lorafarm"] == "base-${VARIANT}"  # VARIANT=cpu|gpu picks the base
    assert args_of(instructions)["VARIANT"] == "cpu"


def test_base_images_are_pinned_ray_images(instructions):
    defaults = args_of(instructions)
    for kind, args in instructions:
        if kind == "FROM" and not args.startswith("base-"):
            image = expand(args.split(" AS ")[0], defaults)
            repo, _, tag = image.partition(":")
            assert repo == "rayproject/ray", image
            assert re.fullmatch(r"\d+\.\d+\.\d+-py3\d+-(cpu|cu\d+)", tag), f"{image}: tag is not an exact version"
            assert tag.startswith(defaults["RAY_VERSION"] + "-")
    # the GPU base's CUDA build and its torch wheel index come from the same ARG
    text = DOCKERFILE.read_text()
    assert "ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA} AS base-gpu" in text
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/${CUDA}" in text
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text


def test_ray_version_agrees_everywhere(instructions):
    ray = Version(args_of(instructions)["RAY_VERSION"])
    assert requirement_pins()["ray"] == ray  # pip must not replace the base image's Ray
    ray_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray"))
    assert ray in ray_req.specifier, f"Dockerfile Ray {ray} is outside pyproject's {ray_req}"
    values = yaml.safe_load((ROOT / "helm" / "lorafarm" / "values.yaml").read_text())
    assert Version(values["ray"]["version"]) == ray
    python = args_of(instructions)["PYTHON_TAG"]  # py311 -> 3.11
    assert Version(f"{python[2]}.{python[3:]}") in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_torch_pin_is_inside_pyproject_range(instructions):
    torch = Version(args_of(instructions)["TORCH_VERSION"])
    torch_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    assert torch in torch_req.specifier
    assert "torch" not in requirement_pins()  # it comes from the variant's index, not PyPI
    run = " ".join(a for k, a in instructions if k == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in run


def test_every_dependency_is_pinned_within_pyproject():
    pins = requirement_pins()
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is a lorafarm dependency but not pinned in deploy/requirements.txt"
        assert pins[name] in req.specifier, f"{req.name}=={pins[name]} is outside pyproject's {req.specifier}"
    assert len(pins) > 50  # the whole closure, not only the direct dependencies


def test_install_steps_use_the_pins(instructions):
    runs = [a for k, a in instructions if k == "RUN"]
    install = next(r for r in runs if "requirements.txt" in r)
    assert "-r /tmp/lorafarm/requirements.txt" in install
    final = next(r for r in runs if "/tmp/lorafarm/src" in r)
    assert "pip install --no-deps /tmp/lorafarm/src" in final  # lorafarm cannot move a pin
    assert "pip check" in final
    copies = [a for k, a in instructions if k == "COPY"]
    for copy in copies:
        sources = [s for s in shlex.split(copy) if not s.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerignore_keeps_the_venv_out():
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore  # deny by default ...
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    needed = {s.rstrip("/") for k, a in parse_dockerfile(DOCKERFILE.read_text()) if k == "COPY"
              for s in [x for x in shlex.split(a) if not x.startswith("--")][:-1]}
    assert needed <= allowed  # ... and each COPY source let back in


# ---------------------------------------------------------------- user and entry point
def test_runs_as_non_root(instructions):
    users = [a for k, a in instructions if k == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so Kubernetes runAsNonRoot can verify it
    values = yaml.safe_load((ROOT / "helm" / "lorafarm" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert str(values["podSecurityContext"]["runAsGroup"]) == users[-1].split(":")[1]


def test_entry_point_matches_pyproject(instructions):
    scripts = PYPROJECT["project"]["scripts"]
    assert list(scripts) == ["lorafarm"]
    (name, target), = scripts.items()
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))
    cmd = next(a for k, a in instructions if k == "CMD")
    assert json.loads(cmd)[0] == name  # exec form (JSON), running the console script
    final = next(a for k, a in instructions if k == "RUN" and "/tmp/lorafarm/src" in a)
    assert f"&& {name} --help" in final  # the build fails if the installed script does not run
    assert not [a for k, a in instructions if k == "ENTRYPOINT"]  # KubeRay sets the command


# ---------------------------------------------------------------- the example RayJob
@pytest.fixture(scope="module")
def rayjob_docs():
    return list(yaml.safe_load_all((ROOT / "deploy" / "examples" / "rayjob.yaml").read_text()))


def test_example_rayjob_validates(rayjob_docs):
    from k8s_schemas import kubernetes_validate, validate_kuberay, validate_pod_template

    kinds = [d["kind"] for d in rayjob_docs]
    assert kinds == ["ConfigMap", "RayJob"]
    kubernetes_validate.validate(rayjob_docs[0], "1.30", strict=True)
    job = rayjob_docs[1]
    validate_kuberay(job, "rayjob")
    spec = job["spec"]["rayClusterSpec"]
    validate_pod_template(spec["headGroupSpec"]["template"], "rayjob head")
    for g in spec["workerGroupSpecs"]:
        validate_pod_template(g["template"], f"rayjob group {g['groupName']}")
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"] == args_of(parse_dockerfile(DOCKERFILE.read_text()))["RAY_VERSION"]


def test_example_rayjob_runs_a_valid_spec_it_mounts(rayjob_docs, tmp_path):
    from lorafarm.spec import load_spec

    cm, job = rayjob_docs
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:2] == ["lorafarm", "run"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if entry[2].startswith(m["mountPath"] + "/"))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    key = entry[2][len(mount["mountPath"]) + 1:]
    path = tmp_path / key
    path.write_text(cm["data"][key])
    spec = load_spec(path)  # raises SpecError listing every problem
    groups = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
               for g in groups)
    assert spec.resources.workers * spec.resources.gpus_per_worker <= gpus  # the cluster fits the job
