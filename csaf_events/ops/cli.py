"""The ``csaf`` command.

Each subcommand is a small function registered in `SUBCOMMANDS`, the one table at the
end of this module: a `Subcommand(name, help, add_arguments, run)`. To add one, write
``_x_arguments(parser)`` and ``_x(args) -> int`` (exit code) and add a row; a module that
registers several subcommands itself (``register(subparsers)``, each setting ``run``) is
added as one `SubcommandGroup(register)` row. `main()` builds the parser from the table
and turns library errors into a one-line message and exit code 1 (argparse's usage
errors exit 2).

    csaf demo [--data-dir DIR] [--seconds N] [--sessions S] [--concurrency C]
    csaf bench [the options of python -m bench]
    csaf serve [--port 8080 ...] [--bootstrap HOST:PORT --namespace NS] (--app module:factory | --test-app)
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from csaf_events.core.errors import CsafError
from csaf_events.ops import cli_log, cli_ops, logs
from csaf_events.ops.cli_ops import number
from csaf_events.ops.cli_run import PROG, run_main
from csaf_events.ops.logs import LEVELS as LOG_LEVELS


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passes_on: bool = False  # the arguments are another program's: `run` finds them in args.passed_on


@dataclass(frozen=True)
class SubcommandGroup:
    """Subcommands a module adds itself: `register(subparsers)` calls `add_parser` for each
    and sets ``run`` (args -> exit code) with `set_defaults`. Import the module inside
    `register` so ``csaf --help`` stays fast and a broken module names itself."""

    register: Callable[[argparse._SubParsersAction], None]


# ---------------------------------------------------------------- argument types --

positive_int = number(int, lambda v: v >= 1, "a positive integer")


def payload_size(text: str) -> int:
    value = positive_int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be at least 16 bytes, got {text!r}")
    return value


# --------------------------------------------------------------------- csaf demo --

def _demo_arguments(p: argparse.ArgumentParser) -> None:
    """None here: the demo parses its own (`python -m bench.demo --help`)."""


def _demo(args: argparse.Namespace) -> int:
    """The demo runs the benchmark's workload (`bench.workload`), a tool of the source
    checkout: like ``csaf bench`` it runs as ``python -m bench.demo`` in the checkout, in a
    process of its own."""
    return subprocess.run([sys.executable, "-m", "bench.demo", *args.passed_on], cwd=checkout("demo")).returncode


# -------------------------------------------------------------------- csaf bench --

def _bench_arguments(p: argparse.ArgumentParser) -> None:
    """None here: the benchmark parses its own (`python -m bench --help`)."""


def _bench(args: argparse.Namespace) -> int:
    """The benchmark is a tool of the source checkout, not part of the library: it runs as
    `python -m bench` in the checkout, in a process of its own, so nothing of it is imported
    here and nothing is added to the import path."""
    return subprocess.run([sys.executable, "-m", "bench", *args.passed_on], cwd=checkout("bench")).returncode


def checkout(command: str) -> Path:
    """The source checkout with `bench/`: the one this package is installed from (editable
    install), else the current directory. `command` (``bench``, ``demo``) names the csaf
    subcommand that needs it."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "bench" / "__main__.py").is_file():
            return root
    raise CsafError(f"csaf {command} runs the benchmark of a csaf-events source checkout (bench/), which "
                    "this installation does not have; run it in the root of a checkout")


# -------------------------------------------------------------------- csaf serve --

def _serve_register(subparsers: argparse._SubParsersAction) -> None:
    """``csaf serve``: csaf_events.matssocket.cli, imported only here (it imports websockets)."""
    from csaf_events.matssocket.cli import register
    register(subparsers)


# ----------------------------------------------------------------- the registry --

SUBCOMMANDS: tuple[Subcommand | SubcommandGroup, ...] = (
    Subcommand("demo", "run the MatsSocket session lifecycle for a few seconds on an embedded store "
                       "(python -m bench.demo of a source checkout)", _demo_arguments, _demo, passes_on=True),
    Subcommand("bench", "the lifecycle benchmark of a source checkout (python -m bench): throughput, latency, "
                        "memory, disk, floor", _bench_arguments, _bench, passes_on=True),
    SubcommandGroup(cli_log.register),  # replay, rebuild, audit, topics
    SubcommandGroup(_serve_register),  # serve: a MatsSocket node
    SubcommandGroup(cli_ops.register),  # status, metrics
)


def build_parser(subcommands: Sequence[Subcommand | SubcommandGroup] = SUBCOMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="csaf-events: the Cluster Store-and-Forward of a MatsSocket cluster.")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help=f"log level ({', '.join(LOG_LEVELS)}; default WARNING)")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line (time, level, logger, message, node, partition, session)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in subcommands:
        if isinstance(c, SubcommandGroup):
            c.register(sub)
            continue
        p = sub.add_parser(c.name, help=c.help, description=c.help, add_help=not c.passes_on)
        c.add_arguments(p)
        p.set_defaults(run=c.run, passes_on=c.passes_on)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passes_on", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passed_on = rest
    if args.log_level or args.log_json or not logging.getLogger().handlers:
        # tools report progress and takeovers through logging; lines name their node, partition, session
        logs.configure(args.log_level or "WARNING", args.log_json)
    return run_main(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
