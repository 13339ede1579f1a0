"""Errors a user can act on, and the exit codes the stages give for them."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (libraries often append pages of detail)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PipelineError(Exception):
    """A problem the user can fix; reported as one line, without a traceback."""

    exit_code = 1


class ConfigError(PipelineError):
    """params.yaml is missing, unreadable or invalid."""

    exit_code = 2


class DataError(PipelineError):
    """A data file is missing, truncated, corrupt or not what it should be."""


class DownloadError(PipelineError):
    """No source could provide a verified copy of a dataset file."""


class ModelError(PipelineError):
    """A model file or URI cannot be loaded safely."""


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that cleanup code runs as for Ctrl-C."""
