"""A registered version's model is the one that was registered.

Train records the SHA-256 of the model file it registers as a tag of the new version. Before
evaluate tags or promotes that version, it checks `models/model.keras` is still that file (a
file swapped by hand, by `dvc checkout` of another commit's output or by an interrupted stage
would have another model's score written on the version); before predict answers with a
registered version, it checks the files it fetched are the registered ones (any member with
EDIT on the experiment can overwrite artifacts through the server). A version registered
before the hash was recorded has no tag and is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.data.digests import sha256_file
from mlpipe.errors import TrackingError
from mlpipe.tracking.failures import tracking_failure

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_SHA256_TAG = "mlpipe.model_sha256"


def record(client: MlflowClient, name: str, version: int, model_file: Path) -> None:
    """Tag the version with its model file's SHA-256."""
    client.set_model_version_tag(name, str(version), MODEL_SHA256_TAG, sha256_file(model_file))


def mismatch(client: MlflowClient, name: str, version: int, found: str) -> str | None:
    """None when `found` (a model file's sha256, taken before it was loaded) is the version's
    registered model's (or the version records no hash, or is not in the registry: the
    caller says so in its own words); else what differs."""
    from mlflow.exceptions import MlflowException

    try:
        recorded = client.get_model_version(name, str(version)).tags.get(MODEL_SHA256_TAG)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingError(tracking_failure(exc, client.tracking_uri)) from exc
    if recorded is None or found == recorded:
        return None
    return f"its sha256 is {found[:12]}..., {name} version {version} registered {recorded[:12]}..."
