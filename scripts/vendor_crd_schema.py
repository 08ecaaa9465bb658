"""Extract one version's openAPIV3Schema from a CustomResourceDefinition into tests/schemas/.

The tests check RayClusters and RayJobs against KubeRay's CRD schemas; a full CRD file is
~1 MB (every version, indented YAML), the one schema they use a fraction of that. Regenerate
after a KubeRay bump:

    .venv/bin/python scripts/vendor_crd_schema.py ray.io_rayclusters.yaml v1 \
        tests/schemas/kuberay-raycluster-v1.json   # and ray.io_rayjobs.yaml -> kuberay-rayjob-v1.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main(crd_path: str, version: str, out_path: str) -> None:
    crd = yaml.load(Path(crd_path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    # one value per line: small, and a KubeRay bump shows up as a readable diff
    Path(out_path).write_text(json.dumps(schema, indent=0, separators=(",", ":"), sort_keys=True) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
