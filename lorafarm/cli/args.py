"""Arguments several commands take, spelled once."""

from __future__ import annotations

import argparse

STORE_HELP = "object store root (default $LORAFARM_STORE or ~/.local/share/lorafarm/store)"


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """A spec file and its ``--set`` overrides."""
    p.add_argument("spec", help="job spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field, e.g. --set training.max_steps=20 (repeatable)")

