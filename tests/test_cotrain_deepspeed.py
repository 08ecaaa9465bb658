"""Co-training on real DeepSpeed (issue 20): the three members of test_cotrain_routing trained
as one pack on one engine — one AdamW param group and one warm-up + cosine schedule per member,
rows ordered by member — equal each to the member trained alone through lorafarm's own
``build_engine``, at ZeRO 0 and 2 (one rank over gloo, fp32, dropout 0), with each member's
gradients clipped by its own norm (alone: DeepSpeed's ``gradient_clipping``; in the pack:
``lorafarm.cotrain.member_optimizer``, per param group; the norm 0.5 clips: without the
per-member clipping the adapters differ by ~0.07)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

HERE = Path(__file__).parent


@pytest.mark.integration
@pytest.mark.parametrize("stage", [0, 2])
def test_a_pack_on_one_engine_trains_each_member_as_alone(stage):
    p = subprocess.run([sys.executable, str(HERE / "cotrain_probe.py"), str(stage), str(free_port()), "0.5"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["stage"] == stage and r["clip"] == 0.5
    assert all(v > 0.1 for v in r["trained"].values()), r  # every member's adapter moved far from its init
    assert all(v < 1e-5 for v in r["rel"].values()), r  # and equals its job trained alone
