"""What every command module shares: the parser class, value parsers, flags generated from the config dataclasses'
field metadata (cnnlab.config.option), the data options, and the handler runner that turns errors into exit codes.

Light on purpose: `cnnlab --help` imports this and nothing heavier than cnnlab.config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import types
import typing
import warnings
from typing import Any

from cnnlab.config import DataOptions
from cnnlab.errors import CnnlabError, ConfigError

EVAL_SPLITS = ("test", "val", "train")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit 2)."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"error: {message} — see `{self.prog} --help`\n")


# ------------------------------------------------------------------ value parsers (argparse `type=`)


def parse_shape(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C (e.g. 100,100,3)") from None


def parse_names(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"{text!r} needs at least two comma-separated class names, e.g. cat,dog")
    return names


def parse_nproc(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected a whole number of processes >= 1, e.g. --nproc 2")
    return value


def parse_key_value(text: str) -> tuple[str, Any]:
    import yaml  # only when a KEY=VALUE flag is given

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. width=48)")
    return key.strip(), yaml.safe_load(value)


# ------------------------------------------------------------------ flags generated from config fields


def parse_pairs(text: str) -> list[tuple[str, Any]]:
    """'cat=2,dog=1' -> [('cat', 2), ('dog', 1)]."""
    return [parse_key_value(part) for part in text.split(",") if part.strip()]


def cli_fields(cls) -> list[str]:
    """The names of cls's fields that declare a flag, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("cli")]


def add_field_options(target, cls, names: list[str] | tuple[str, ...] | None = None, *, unset: Any = argparse.SUPPRESS,
                      overrides: dict[str, dict[str, Any]] | None = None) -> None:
    """Add the flags that cls's fields declare (help, choices, metavar, spelling) to a parser or argument group.

    names: the fields, in this order (default: every field with a flag). unset: what a flag that is not given
    leaves — SUPPRESS leaves no attribute at all, so a `--config` file's value is not overwritten by a default.
    overrides: per field, argparse keywords that differ for this command (another default or help).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in names if names is not None else cli_fields(cls):
        f = fields[name]
        kwargs = {**_flag_kwargs(f, hints[name], unset), **(overrides or {}).get(name, {})}
        target.add_argument(f.metadata.get("flag") or "--" + name.replace("_", "-"), dest=name, **kwargs)


def _flag_kwargs(f: dataclasses.Field, annotation: Any, unset: Any) -> dict[str, Any]:
    """argparse keywords for one field: the kind of flag follows the field's type (see cnnlab.config.option)."""
    meta = f.metadata
    kwargs: dict[str, Any] = {"default": unset, "help": meta.get("help")}
    kwargs.update({k: meta[k] for k in ("metavar", "choices") if k in meta})
    if "const" in meta:  # the flag alone means this value
        kwargs.update(nargs="?", const=meta["const"])
    inner = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = inner[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else annotation  # T | None -> T
    origin = typing.get_origin(base) or base
    if origin is bool:  # a switch when off by default; --x / --no-x when on or undecided (None) by default
        kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
    elif origin is dict:  # repeatable KEY=VALUE (pairs: KEY=VALUE,KEY=VALUE in one go)
        kwargs.update(action="extend" if meta.get("pairs") else "append", type=parse_pairs if meta.get("pairs") else parse_key_value)
    elif origin is list:
        kwargs["type"] = parse_shape if typing.get_args(base) == (int,) else parse_names
    elif origin is not str:
        kwargs["type"] = origin
    return kwargs


# ------------------------------------------------------------------ the data options (cnnlab.config.DataOptions)


def add_data_options(parser: argparse.ArgumentParser, *, unset: Any = None, only: tuple[str, ...] | None = None,
                     overrides: dict[str, dict[str, Any]] | None = None) -> None:
    """The dataset options (all of them, or `only` these) as the parser's "data" group."""
    add_field_options(parser.add_argument_group("data"), DataOptions, only, unset=unset, overrides=overrides)


def data_options(args: argparse.Namespace) -> DataOptions:
    """The data options given on the command line (None for the others)."""
    return DataOptions(**{name: getattr(args, name, None) for name in cli_fields(DataOptions)})


def need_data(args: argparse.Namespace) -> str:
    if not getattr(args, "data", None):
        raise ConfigError(f"`cnnlab {args.command}` needs --data SPEC (a dataset folder, .npz or builtin:shapes)")
    return args.data


# ------------------------------------------------------------------ running a handler


def print_notes(ds) -> None:
    """What loading noticed (rows whose file is missing, unlabelled images, folders beside the splits, images skipped as
    unreadable): on stderr."""
    for note in getattr(ds, "notes", None) or []:
        print(note, file=sys.stderr)
    bad = getattr(ds, "bad_files", None) or []
    if bad:  # skipped up to --max-bad-fraction: the results leave them out, so say so
        print(f"warning: skipped {len(bad)} unreadable image(s) (first: {bad[0][0]}: {bad[0][1]}) — `cnnlab data check {ds.spec}` lists"
              " them all", file=sys.stderr)


# The optional parts of cnnlab (pyproject's extras) and the packages they bring: a command that meets one missing
# says which `pip install` adds it, instead of a traceback.
EXTRAS = {
    "serve": ("fastapi", "uvicorn", "multipart", "python_multipart", "httptools", "prometheus_client"),
    "tune": ("optuna", "sqlalchemy", "alembic"),
    "export": ("onnx", "onnxruntime", "onnxconverter_common", "onnxscript"),
    "track": ("tensorboard", "mlflow"),
}


def missing_extra(e: ModuleNotFoundError) -> str | None:
    """The extra that provides the module an import could not find, or None (a bug, or not ours)."""
    top = (e.name or "").split(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def allocation_text(message: str) -> str:
    """' (could not allocate 5.2 GiB)' from an allocator's message (torch's CPU and CUDA wordings), else ''."""
    import re

    m = re.search(r"tried to allocate (\d+) bytes", message, re.I)
    if m:
        return f" (could not allocate {int(m.group(1)) / 2**30:.1f} GiB)"
    m = re.search(r"tried to allocate ([\d.]+ [KMGT]i?B)", message, re.I)
    return f" (could not allocate {m.group(1)})" if m else ""


@contextlib.contextmanager
def console_warnings():
    """What a command's console shows of Python warnings: cnnlab's own UserWarnings, as `warning: MESSAGE` lines.
    Libraries' warnings (torch's notes on pickle protocols, matplotlib's missing glyphs, deprecations) are about our code,
    not the user's input, so they stay off the console; `python -W ...`, PYTHONWARNINGS or CNNLAB_DEBUG=1 show them all."""
    if sys.warnoptions or os.environ.get("CNNLAB_DEBUG"):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", category=UserWarning, module=r"cnnlab(\.|$)")
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from")  # matplotlib's, attributed to our drawing code
        warnings.showwarning = _one_line_warning
        yield


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run(handler, args: argparse.Namespace) -> int:
    """Call handler(args): bad input is one line on stderr and its exit code (2), Ctrl-C exit 130 (a SIGTERM turned into
    an interrupt: 143), a bug exit 1. Warnings are cnnlab's own only, one line each (console_warnings)."""
    try:
        with console_warnings():
            return handler(args) or 0
    except CnnlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `cnnlab predict … | head`: the reader left; nothing more to say (as `cat` and `ls` behave)
        try:
            sys.stdout = open(os.devnull, "w")  # the interpreter's final flush of the closed pipe must not complain either
        except OSError:
            pass
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    except KeyboardInterrupt as e:
        name, number = e.args if len(e.args) == 2 and isinstance(e.args[1], int) else ("", 2)  # engine.signals.Signalled
        print(f"interrupted ({name})" if name else "interrupted", file=sys.stderr)
        return 128 + number
    except Exception as e:  # a bug, not bad input: say so in one line, traceback only on request
        extra = missing_extra(e) if isinstance(e, ModuleNotFoundError) else None
        if extra is not None:  # an optional part that is not installed: which pip install adds it
            command = " ".join(filter(None, (getattr(args, "command", None), getattr(args, "data_command", None))))
            print(f"error: `cnnlab {command}` needs the {extra!r} extra ({e.name} is not installed) — pip install 'cnnlab[{extra}]'",
                  file=sys.stderr)
            return 2
        if isinstance(e, MemoryError) or "can't allocate memory" in str(e) or "out of memory" in str(e).lower():
            print(f"error: out of memory{allocation_text(str(e))} — choose a smaller --image-size or --batch-size", file=sys.stderr)
            return 2
        if os.environ.get("CNNLAB_DEBUG"):
            raise
        print(f"internal error: {e.__class__.__name__}: {e} — please report it (set CNNLAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
