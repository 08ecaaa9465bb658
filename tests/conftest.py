"""Shared fixtures: one local Ray cluster per session, real Ray heads running the scheduler, a
moto S3 server. Plain helpers (ports, polling, spec builders, required tools) are in helpers.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ROOT, write_small_chat_dataset
from ray_head import RayHead

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("LORAFARM_CACHE", str(ROOT / ".cache" / "lorafarm"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

UNIT_TEST_TIMEOUT_S = 300  # the slowest unit tests take under a minute alone; pyproject's timeout is for integration


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests not marked integration get a tighter timeout, so a hang there fails in minutes."""
    for item in items:
        if item.get_closest_marker("integration") is None and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TEST_TIMEOUT_S))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster with more logical CPUs than cores: 2 workers plus Ray Data tasks."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The built-in tiny-llama's byte-level tokenizer (no chat template)."""
    from lorafarm.model.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    """The tiny tokenizer saved as a Hugging Face directory, the way `prepare` loads a base's."""
    from lorafarm.model.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def serve_cluster() -> Iterator[Callable[[str, int], RayHead]]:
    """Start a real Ray head with `lorafarm serve` on it: ``serve_cluster(tenants_yaml, num_cpus)``
    returns its ``RayHead`` with ``.store`` and ``.tmp`` (holding tenants.yaml and small.jsonl,
    48 chat rows); more arguments go to `lorafarm serve` (e.g. ``"--api-port", "N"``). Every
    head started is stopped when the module ends."""
    heads: list[RayHead] = []

    def start(tenants: str, num_cpus: int, *serve_args: str) -> RayHead:
        tmp = Path(tempfile.mkdtemp(prefix="lfc", dir="/tmp"))  # short: Ray's socket paths have a length limit
        head = RayHead(tmp, num_cpus=num_cpus)
        heads.append(head)
        head.store = str(tmp / "store")
        (tmp / "tenants.yaml").write_text(tenants)
        write_small_chat_dataset(tmp / "small.jsonl")
        head.lorafarm("serve", "--store", head.store, "--tenants", str(tmp / "tenants.yaml"), "--reserve-cpus", "1",
                      *serve_args, check=True, timeout=180)
        return head

    yield start
    for head in heads:
        head.stop()
        shutil.rmtree(head.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on 127.0.0.1, with credentials in the standard variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"lorafarm-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
