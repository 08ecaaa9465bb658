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



def add_access_args(p: argparse.ArgumentParser, api: bool = True) -> None:
    """How a command reaches the scheduler as a tenant: its API key, and optionally the REST API."""
    p.add_argument("--key-file", metavar="FILE",
                   help="file holding your API key (default $LORAFARM_API_KEY); needed when the tenants file lists keys")
    if api:
        p.add_argument("--api", metavar="URL", help="the scheduler's REST API (`lorafarm serve --api-port`), "
                                                    "instead of Ray (default $LORAFARM_API)")


def configure_access(args: argparse.Namespace) -> None:
    """Apply ``--key-file``/``--api`` before a command calls the scheduler."""
    from .. import api

    api.configure_access(getattr(args, "key_file", None), getattr(args, "api", None))


def notice_printer(console: Console) -> Callable[[str], None]:
    """Print a preflight notice (an interval capped to the run's length) as one stderr line."""

    def notice(message: str) -> None:
        console.print(f"[cyan]notice:[/] {escape(message)}", highlight=False, soft_wrap=True)

    return notice
