"""Run the ``cibot`` command line: route, assess, serve, worker, report, ci, eval, services."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Protocol, cast

from bot.kernel.errors import InputError, describe

log = logging.getLogger("cibot.cli")

# Each subcommand lives in its own module, imported only when it runs, so that
# `cibot route` does not pay for Celery, Starlette or litellm imports.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "route": ("bot.decide", "Explain how one task on one diff would be routed."),
    "assess": ("workers.assess", "Replay a repo's history through the router and cost model."),
    "serve": ("bot.server", "Start the webhook server."),
    "worker": ("workers.worker_cli", "Start a Celery worker for the given queues."),
    "report": ("workers.report", "Print the ledger's figures, cost per accepted PR first."),
    "ci": ("bot.actions", "Run one task inline, as a GitHub Actions step."),
    "eval": ("bot.evaluate", "Score the router on labelled cases: recall and false escalation."),
    "services": ("bot.services_cli", "Print the service map inferred from a checkout."),
    "capacity": ("bot.capacity_cli", "Size a model on H200s, or check private tiers' rungs."),
    "demo": ("workers.demo", "Fill a ledger with a clearly labelled simulated month of work."),
    "replay": (
        "workers.replay",
        "Rerun captured tasks on other models and score them side by side.",
    ),
}


class Subcommand(Protocol):
    """Shape of a subcommand module."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's flags."""

    def run(self, args: argparse.Namespace) -> int:
        """Run it and return the exit code."""


def _load(name: str) -> Subcommand | None:
    """Import a subcommand's module, or return None when it is not built yet."""
    try:
        return cast(Subcommand, importlib.import_module(SUBCOMMANDS[name][0]))
    except ModuleNotFoundError as exc:
        if exc.name == SUBCOMMANDS[name][0]:
            return None
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; load only the chosen subcommand's module."""
    parser = argparse.ArgumentParser(prog="cibot", description=__doc__)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub = subs.add_parser(name, help=help_text, description=help_text)
        if only in (None, name):
            module = _load(name)
            if module is not None:
                module.add_arguments(sub)
    return parser


class CliError(InputError):
    """Report bad command-line input; printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the subcommand, and turn any error into a one-line message.

    The line says what failed and what to do; the exit code is 2 for bad input or
    configuration and 1 for work that failed. The traceback goes to the debug log only.
    """
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    args = build_parser(chosen).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    module = _load(args.command)
    if module is None:
        print(f"cibot {args.command}: not available in this build", file=sys.stderr)
        return 2
    try:
        return module.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (say, `cibot report | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # the edge: every error becomes one line and an exit code
        return report_failure(args.command, exc, os.environ)


def report_failure(command: str, exc: Exception, environ: Mapping[str, str]) -> int:
    """Log the traceback at debug level, print what failed and what to do; return the code."""
    if environ.get("CIBOT_LOG_LEVEL", "").lower() == "debug" and not logging.getLogger().handlers:
        from bot.kernel import logsetup

        logsetup.configure(level="debug")  # commands that set up no logging still show it
    log.debug("command failed", extra={"command": command}, exc_info=exc)
    problem = describe(exc)
    print(f"cibot {command}: {problem.line()}", file=sys.stderr)
    return problem.exit_code


if __name__ == "__main__":
    sys.exit(main())
