"""How every command ends: exit codes, the ``--json`` line, and errors as one line each.

No Python traceback reaches a user (set ``LORAFARM_DEBUG=1`` to see one). Every command
module imports what it needs from here; this module imports no command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from ..errors import LorafarmError, SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130

Handler = Callable[[argparse.Namespace, Console], int]


class Parser(argparse.ArgumentParser):
    """Usage errors exit 2 and name the help to read."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"lorafarm: error: {message} — see `lorafarm {self.prog.split()[-1]} --help`\n")
        sys.exit(EXIT_USAGE)


def number(minimum: float, *, above: bool = False, integer: bool = False,
           maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number >= ``minimum`` (> when ``above``), at most
    ``maximum``, an integer when ``integer``; anything else is a usage error (exit 2) naming the flag."""
    import math

    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    if maximum is not None:
        bound += f" and <= {maximum:g}"
    kind = "an integer" if integer else "a finite number"

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind} — use {kind} {bound}") from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum) or (
                maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{text} is out of range — use {kind} {bound}")
        return value

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in its messages
    return parse


VERBOSE_ENV = "LORAFARM_VERBOSE"  # read by lorafarm.rayio.verbose(), in every process the CLI starts


def quiet_ray(verbose: bool) -> None:
    """Call before Ray is imported: Ray's INFO lines ("Connecting to existing Ray cluster",
    "Started a local Ray instance") show only with ``--verbose``. ``RAY_LOGGER_LEVEL`` is the
    default of ``ray.init(logging_level=...)``, read when Ray is imported; a value the user set
    is kept."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return
    os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")


def emit_json(obj: Any) -> None:
    """One JSON object as one stdout line (``--json``: scripts read the last line)."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def run_command(handler: Handler, args: argparse.Namespace, console: Console) -> int:
    """Run one command; map what it raises to a message and an exit code."""
    try:
        return int(handler(args, console) or EXIT_OK)
    except SpecError as e:
        for line in e.problems:
            console.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)  # [q_proj] is text
        return EXIT_USAGE
    except LorafarmError as e:
        console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - last resort: one line, traceback only on request
        if os.environ.get("LORAFARM_DEBUG"):
            traceback.print_exc()
        console.print(f"[red]error:[/] unexpected {type(e).__name__}: {escape(str(e))} (set LORAFARM_DEBUG=1 for a traceback)",
                      highlight=False, soft_wrap=True)
        return EXIT_FAILED
