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
from .args import configure_access
from .output import Parser, quiet_ray, run_command

COMMAND_MODULES = (job_cmds, service_cmds, use_cmds, sim_cmds, ops_cmds)  # in `lorafarm --help` order


VERBOSE_HELP = "show Ray's own INFO lines and driver messages (hidden by default)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lorafarm", description="Multi-tenant LoRA fine-tuning on Ray + DeepSpeed.")
    parser.add_argument("--verbose", "-v", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    for command in sub.choices.values():  # `lorafarm status JOB --verbose` works too
        if "--verbose" not in command._option_string_actions:
            command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_ray(getattr(args, "verbose", False))  # before any command imports Ray

    def handler(a: argparse.Namespace, console: Console) -> int:
        configure_access(a)  # --key-file / --api (a bad key file is a usage error, exit 2)
        return a.handler(a, console)

    return run_command(handler, args, Console(stderr=True))


if __name__ == "__main__":
    sys.exit(main())
