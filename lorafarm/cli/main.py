"""The ``lorafarm`` command line. Exit codes: 0 ok, 1 job failed, 2 bad spec or usage
(3: a followed job was cancelled).

Each command module registers its commands the same way: ``register(sub)`` adds the parsers,
each with ``set_defaults(handler=...)``; a handler takes ``(args, console)`` and returns the exit
code. Command modules import only what they need at module level (argparse, rich, the cheap
:mod:`lorafarm.api`), so ``lorafarm --help`` is fast; errors and exit codes go through
:mod:`.output`.
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from . import job_cmds, ops_cmds, service_cmds, sim_cmds, use_cmds
from .output import Parser, run_command

COMMAND_MODULES = (job_cmds, service_cmds, use_cmds, sim_cmds, ops_cmds)  # in `lorafarm --help` order


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lorafarm", description="Multi-tenant LoRA fine-tuning on Ray + DeepSpeed.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.handler, args, Console(stderr=True))


if __name__ == "__main__":
    sys.exit(main())
