"""``python -m lorafarm.rest.schema [OUT]``: write the OpenAPI document (deploy/openapi.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .app import openapi_schema


def render() -> str:
    return json.dumps(openapi_schema(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    text = render()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        sys.stdout.write(text)
