"""Errors users can act on.

Every problem caused by input (a file, a flag, a config key) is raised as a `CnnlabError`
subclass with one line that says what is wrong, where, and how to fix it. The CLI prints that
line and exits with `exit_code` (2 for usage/input errors) instead of showing a traceback.
"""

from __future__ import annotations


class CnnlabError(Exception):
    """Base class: a one-line, user-facing message and an exit code."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # keep the message exactly as written
        return self.message


class DataError(CnnlabError):
    """A dataset, file or label problem (names the file, line/column and the fix)."""


class ConfigError(CnnlabError):
    """A wrong option, config key or value."""


class ModelError(CnnlabError):
    """An unknown model, a bad model file or an architecture/input mismatch."""


class DownloadError(CnnlabError):
    """Pretrained weights or a public dataset could not be fetched or failed its checksum (names each URL and
    where to place the file by hand)."""


class TrainingError(CnnlabError):
    """Training cannot continue (e.g. non-finite loss); exit code 1, the checkpoint stays."""

    exit_code = 1


class TrainingInterrupted(TrainingError):
    """Training stopped by SIGINT/SIGTERM (the state saved, or nothing to resume yet). Exits 128 + the signal's number,
    as a shell reports a command a signal ended — 130 for Ctrl-C, 143 for SIGTERM — so scripts tell it from a failure."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        import signal

        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = 128 + signal.Signals[signal_name].value if signal_name in signal.Signals.__members__ else 1


class DistributedError(CnnlabError):
    """A rank could not join the other ranks of a distributed run, or lost contact with them; exit code 1."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 200) -> str:
    """A library exception's text for one of our messages: its first line, at most `limit` characters, cut between
    words (" …" marks the cut) — torch's and onnx's messages run to paragraphs, and a word cut in half reads as a typo.
    The exception's type name when it has no text."""
    text = (str(e).strip().splitlines() or [""])[0].strip()
    if not text:
        return type(e).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit] != " " and " " in head:  # the limit falls inside a word: end before it
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:(") + " …"
