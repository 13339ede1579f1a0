"""A tracking server's login and permissions, as one line that says what to set or ask for.

The credentials are MLflow's own: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or
~/.mlflow/credentials. MLflow reports a refusal only in its message ("... failed with error
code 403 != 200"), so that is what is read here.
"""

from __future__ import annotations

import re

from mlpipe.errors import TrackingError, first_line, redact

LOGIN_CHECK_TIMEOUT_S = 5.0
_REFUSED = re.compile(r"endpoint (\S+) failed with error code (401|403)\b")


def check_login(uri: str) -> None:
    """Raise TrackingError at once if a server that asks for a login refuses ours."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    endpoint = "/api/2.0/mlflow/experiments/search"
    try:
        reply = http_request(
            get_default_host_creds(uri),
            endpoint,
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=LOGIN_CHECK_TIMEOUT_S,
            raise_on_status=False,
        )
    except MlflowException as exc:  # a timeout or a dropped connection, after /health answered
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} does not answer ({redact(first_line(exc))})"
        ) from exc
    if reply.status_code == 401:
        raise TrackingError(access_refused(uri, 401, endpoint))


def refused_status(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status (401 or 403) and endpoint of a refused request behind `exc`, if any."""
    found = _REFUSED.search(str(exc))
    return (int(found.group(2)), found.group(1)) if found else None


def refusal(exc: BaseException, uri: str) -> str | None:
    """The line for a refused login or permission behind `exc`; None if it is not one."""
    refused = refused_status(exc)
    return access_refused(uri, *refused) if refused else None


def access_refused(uri: str, status: int, endpoint: str) -> str:
    """What a 401 or 403 from a tracking server means, and what to set or ask for."""
    from mlflow.utils.credentials import get_default_host_creds

    user = get_default_host_creds(uri).username
    server = f"MLflow tracking server {redact(uri)}"
    if status == 401 and not user:
        return (
            f"{server} asks for a login: set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD (or write them to ~/.mlflow/credentials)"
        )
    if status == 401:
        return (
            f"{server} refused the login of user {user!r} (wrong password or unknown user): "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    action = endpoint.rsplit("/mlflow/", 1)[-1]
    return (
        f"{server}: user {user!r} may not do {action} here (HTTP 403, permission denied); "
        f"ask the server's admin to run: python -m mlpipe.team add-member {user}"
    )
