"""A team server's users and what they may do: MLflow's auth client, made idempotent (run
`add-member` again and it changes what differs, nothing else)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlpipe.tracking.run_lifecycle import EXPERIMENT_TAGS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.server.auth.entities import User


def existing_user(auth: AuthServiceClient, username: str) -> User | None:
    """The server's user of this name, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return auth.get_user(username)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def grant(
    auth: AuthServiceClient, username: str, kind: str, resource: str, permission: str
) -> None:
    """Give `username` exactly `permission` on the resource, replacing what they had."""
    from mlflow.exceptions import MlflowException

    try:
        auth.grant_user_permission(username, kind, resource, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, kind, resource)
        auth.grant_user_permission(username, kind, resource, permission)


def team_experiment(client: MlflowClient, name: str) -> str:
    """The team experiment's id, created (as the pipeline would tag it) if need be."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags=EXPERIMENT_TAGS)
    return experiment.experiment_id


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name)
