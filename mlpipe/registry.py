"""Model promotion with registry aliases: `challenger` is the newest, `champion` the best."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
ACCURACY_TAG = "test_accuracy"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def promote(client: MlflowClient, name: str, version: int, accuracy: float) -> Decision:
    """Give `version` the challenger alias, and the champion alias if it beats the holder.

    The accuracy is kept as a version tag, so later versions are compared with the champion
    on the same test metric without reloading it.
    """
    from mlflow.exceptions import MlflowException

    client.set_model_version_tag(name, str(version), ACCURACY_TAG, f"{accuracy:.6f}")
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and int(champion.version) == version:
        return Decision(True, f"version {version} already holds {CHAMPION}")
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return Decision(
            True,
            f"no version held {CHAMPION}; version {version} takes it "
            f"with test accuracy {accuracy:.4f}",
        )
    best = float(champion.tags.get(ACCURACY_TAG, "-inf"))
    if accuracy > best:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return Decision(
            True,
            f"version {version} (test accuracy {accuracy:.4f}) beats {CHAMPION} version "
            f"{champion.version} ({best:.4f}) and takes {CHAMPION}",
        )
    return Decision(
        False,
        f"version {version} (test accuracy {accuracy:.4f}) does not beat {CHAMPION} version "
        f"{champion.version} ({best:.4f}); it stays {CHALLENGER}",
    )
