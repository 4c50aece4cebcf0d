"""Command-line interface: parse, call the API, print. No logic of its own.

One module per command group, each with `register(subparsers)`: it adds its parsers and sets `func=handler` on
each, where `handler(args) -> int` raises a CnnlabError for bad input. The flags of training options come from
the config dataclasses (cnnlab/config.py), declared there once. Handlers import what they need (the API, torch,
numpy, ...) when they run, so `cnnlab --help`, `cnnlab CMD --help` and usage errors answer at once.

Every input problem ends as one line on stderr and exit code 2; interruption as exit 130.
"""

from __future__ import annotations

import argparse
import signal
import sys

from cnnlab._version import __version__
from cnnlab.cli import data, evaluate, export, insight, lr_find, models, serve, show, train, tune
from cnnlab.cli._common import Parser, run

COMMAND_GROUPS = (train, evaluate, show, models, data, export, serve, insight, lr_find, tune)  # in `cnnlab --help` order

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cnnlab", description="Learn, experiment with and deploy CNN image classifiers.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in COMMAND_GROUPS:
        group.register(sub)
    parser.commands = sub.choices  # name -> the command's parser
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # point at the help of the command that was given, not cnnlab's list of commands
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.command:
        parser.print_help()
        return 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # `train --nproc N` runs the same command line once per rank
    args.count_startup = argv is None  # a command-line run: a time budget also covers interpreter start-up
    code = run(args.func, args)
    if argv is None:  # the command has answered: a late Ctrl-C must not turn the interpreter's teardown into a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    distributed = sys.modules.get("cnnlab.engine.distributed")  # only imported by commands that can join a group
    if argv is None and distributed is not None:  # a command-line rank leaves without the interpreter's teardown
        distributed.exit_rank_process(code)
    return code
