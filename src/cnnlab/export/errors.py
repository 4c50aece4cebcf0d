"""The export tools' own error: a model that cannot be exported, or whose export fails its check."""

from __future__ import annotations

from cnnlab.errors import CnnlabError


class ExportError(CnnlabError):
    """An export that cannot be made or fails its check (nothing is written); one line, exit code 2."""
