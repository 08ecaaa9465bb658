"""The ``lorafarm`` command line. Exit codes: 0 ok, 1 job failed, 2 bad spec or usage.

No Python traceback reaches a user: errors print one line per problem (set
``LORAFARM_DEBUG=1`` to see tracebacks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

from rich.console import Console

from ..errors import LorafarmError, SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with the fix
        self.print_usage(sys.stderr)
        sys.stderr.write(f"lorafarm: error: {message} — see `lorafarm {self.prog.split()[-1]} --help`\n")
        sys.exit(EXIT_USAGE)


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="job spec YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec field, e.g. --set training.max_steps=20 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lorafarm", description="Multi-tenant LoRA fine-tuning on Ray + DeepSpeed.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="run one job on the current (or a local) Ray cluster")
    _add_spec_args(p)
    p.add_argument("--store", help="object store root (default $LORAFARM_STORE or ~/.local/share/lorafarm/store)")
    p.add_argument("--resume", metavar="JOB_ID", help="continue that job from its latest checkpoint (the same spec; "
                   "resources, zero.stage and micro_batch_size may change)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")

    p = sub.add_parser("validate", help="check a spec and its data/model without training (exit 0 or 2)")
    _add_spec_args(p)
    p.add_argument("--json", action="store_true")

    sub.add_parser("schema", help="print the job spec's JSON schema")

    p = sub.add_parser("pull", help="download a verified adapter")
    p.add_argument("source", help="adapter URI, or a job id with --store/--tenant")
    p.add_argument("dest", help="local directory")
    p.add_argument("--store")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("merge", help="write the base model with the adapter merged in (HF directory)")
    p.add_argument("adapter", help="adapter URI or local directory")
    p.add_argument("outdir")
    p.add_argument("--base", help="base model directory (default: the manifest's base_model)")
    p.add_argument("--scale", type=float, default=1.0, help="adapter strength (multiplies alpha/r)")

    p = sub.add_parser("serve", help="start the scheduler on the current Ray cluster (harmless if running)")
    p.add_argument("--store", help="object store root (default $LORAFARM_STORE or ~/.local/share/lorafarm/store)")
    p.add_argument("--tenants", help="tenants file (YAML): quotas, weights, priority classes")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--hang-timeout", type=float, default=1800.0, help="fail a job with no progress for this long (s)")
    p.add_argument("--reserve-cpus", type=float, default=0.0, help="logical CPUs kept free for data tasks")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("submit", help="queue a job with the scheduler")
    _add_spec_args(p)
    p.add_argument("--wait", action="store_true", help="follow the job; exit 0/1/3 on succeeded/failed/cancelled")
    p.add_argument("--json", action="store_true")

    for name, help_text in [("status", "a job's state"), ("cancel", "cancel a job"), ("events", "a job's events")]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("job")
        p.add_argument("--json", action="store_true")
        if name == "status":
            p.add_argument("--watch", action="store_true", help="follow with a live progress bar")
    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true")
    p = sub.add_parser("list", help="jobs, optionally by tenant and state")
    p.add_argument("--tenant")
    p.add_argument("--state")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("tenants", help="quota, usage, queued and running per tenant")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("models", help="built-in models")
    msub = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    e = msub.add_parser("export", help="write a built-in model as a Hugging Face directory")
    e.add_argument("name", choices=["tiny-llama"])
    e.add_argument("dir")

    for module in _command_modules():
        module.add_parsers(sub, _Parser)
    return parser


# Command groups that live in their own modules. Each exposes ``add_parsers(sub, parser_class)``
# and ``HANDLERS`` ({command name: handler(args, console) -> exit code}); heavy imports stay
# inside the handlers so ``lorafarm --help`` is fast.
COMMAND_MODULES: tuple[str, ...] = ("use_cmds", "sim_cmds", "ops_cmds")


def _command_modules() -> list[Any]:
    import importlib

    return [importlib.import_module(f"{__package__}.{name}") for name in COMMAND_MODULES]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    try:
        return int(_dispatch(args, console) or 0)
    except SpecError as e:
        for line in e.problems:
            console.print(f"[red]error:[/] {line}", highlight=False, markup=True, soft_wrap=True)
        return EXIT_USAGE
    except LorafarmError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
        if os.environ.get("LORAFARM_DEBUG"):
            traceback.print_exc()
        console.print(f"[red]error:[/] unexpected {type(e).__name__}: {e} (set LORAFARM_DEBUG=1 for a traceback)",
                      highlight=False, soft_wrap=True)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    from . import commands, service_cmds

    handlers = {
        "run": commands.run,
        "validate": commands.validate,
        "schema": commands.schema,
        "pull": commands.pull,
        "merge": commands.merge,
        "models": commands.models,
        "serve": service_cmds.serve,
        "submit": service_cmds.submit,
        "status": service_cmds.status,
        "list": service_cmds.list_jobs,
        "cancel": service_cmds.cancel,
        "events": service_cmds.events,
        "logs": service_cmds.logs,
        "tenants": service_cmds.tenants,
    }
    for module in _command_modules():
        handlers.update(module.HANDLERS)
    return handlers[args.command](args, console)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
