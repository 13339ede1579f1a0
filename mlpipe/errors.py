"""Errors a user can act on, and the exit codes the stages give for them."""

from __future__ import annotations

import re

# Everything between `scheme://` and the last `@` of a URL: a user, a password or a token.
_USERINFO = re.compile(r"(?<=://)[^\s'\"<>]*@")
# Query parameters that carry secrets (`?password=`, `&token=`, signed URLs' `sig=`).
_SECRET_QUERY = re.compile(
    r"([?&][\w.-]*(?:pass|pwd|token|secret|key|sig|auth|credential)[\w.-]*=)[^&\s'\"<>]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it masked, so none reaches a log or an error.

    Over-masking is the safe side: any `...@` after `://` is taken for credentials.
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("***@", text))


def one_line(text: str) -> str:
    """`text` for an error line: credentials masked, its lines joined (a library's message may
    end in a newline or carry a second line of detail)."""
    return re.sub(r"\s*[\r\n]+\s*", " ", redact(text)).strip()


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


class Pruned(PipelineError):
    """A sweep's pruner stopped this trial's training at an epoch: not an error of the user's,
    but the stage must fail, so that DVC keeps no half-trained model for these params."""

    exit_code = 3

    def __init__(self, epoch: int, message: str) -> None:
        super().__init__(message)
        self.epoch = epoch


class Terminated(BaseException):
    """Raised from the SIGTERM handler so that cleanup code runs as for Ctrl-C."""
