"""Arguments several commands take, spelled once."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

STORE_HELP = "object store root (default $LORAFARM_STORE or ~/.local/share/lorafarm/store)"


def add_spec_args(p: argparse.ArgumentParser) -> None:
    """A spec file and its ``--set`` overrides."""
    p.add_argument("spec", help="job spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field, e.g. --set training.max_steps=20 (repeatable)")



def notice_printer(console: Console) -> Callable[[str], None]:
    """Print a preflight notice (an interval capped to the run's length) as one stderr line."""

    def notice(message: str) -> None:
        console.print(f"[cyan]notice:[/] {escape(message)}", highlight=False, soft_wrap=True)

    return notice
