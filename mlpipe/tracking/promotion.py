"""Model promotion with registry aliases: `challenger` is the newest, `champion` the best.

The best on validation: a version is ranked on the metric `evaluate.promote_by` names
(`val_accuracy` or `val_loss`, computed by evaluate on the validation split), never on the
test set, which stays the held-out estimate; fifty sweep trials ranked on test accuracy would
be selection on the test set. Each version carries the metric it was ranked on as a tag.

Two evaluate stages may finish together (`dvc queue start -j 2`). Promotion is therefore a
compare-and-set under the store's lock, re-checked after setting: a promoter that finds another
holder after its own write compares again, so a worse model never keeps `champion`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlpipe.errors import TrackingError
from mlpipe.tracking.failures import tracking_failure
from mlpipe.tracking.store import store_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
MAX_ATTEMPTS = 5  # compare-and-set rounds before giving up on a store that keeps changing


@dataclass(frozen=True)
class Score:
    """What a version is ranked on: a validation metric's key as logged, and its value."""

    key: str
    value: float

    @property
    def higher_is_better(self) -> bool:
        return not self.key.endswith("loss")

    def beats(self, other: float) -> bool:
        return self.value > other if self.higher_is_better else self.value < other

    def of(self, version: ModelVersion) -> float:
        """The same metric's value on another version; the worst possible when it has none (a
        version ranked before, on another metric)."""
        worst = float("-inf") if self.higher_is_better else float("inf")
        try:
            return float(version.tags.get(self.key, worst))
        except ValueError:
            return worst

    def __str__(self) -> str:
        return f"{self.key} {self.value:.4f}"


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def promote(
    client: MlflowClient, name: str, version: int, score: Score, held_out: dict[str, float]
) -> Decision:
    """Give `version` the challenger alias, and the champion alias if its score beats the
    holder's.

    The score and the held-out test metrics are kept as version tags, so later versions are
    compared with the champion on the same metric without reloading it.
    """
    from mlflow.exceptions import MlflowException

    with store_lock(client.tracking_uri):
        try:
            return _promote(client, name, version, score, held_out)
        except MlflowException as exc:
            # A refused permission, the server or database away: one line that says which.
            raise TrackingError(tracking_failure(exc, client.tracking_uri)) from exc


def _promote(
    client: MlflowClient, name: str, version: int, score: Score, held_out: dict[str, float]
) -> Decision:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"registered model {name} version {version} (from models/run.json) is not in "
            "the registry (deleted?); run the train stage again"
        ) from exc
    for key, value in {**held_out, score.key: score.value}.items():
        client.set_model_version_tag(name, str(version), key, f"{value:.6f}")
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    for _ in range(MAX_ATTEMPTS):
        decision = _compare_and_set(client, name, version, score)
        holder = _champion(client, name)
        # Re-check: another machine's promoter may have written between our read and write.
        if holder is not None and (
            int(holder.version) == version or not score.beats(score.of(holder))
        ):
            return decision
    raise TrackingError(f"{name}: {CHAMPION} kept changing under promotion; run evaluate again")


def _compare_and_set(client: MlflowClient, name: str, version: int, score: Score) -> Decision:
    champion = _champion(client, name)
    if champion is not None and int(champion.version) == version:
        return Decision(True, f"version {version} already holds {CHAMPION}")
    if champion is None:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return Decision(
            True, f"no version held {CHAMPION}; version {version} takes it with {score}"
        )
    best = score.of(champion)
    if score.beats(best):
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return Decision(
            True,
            f"version {version} ({score}) beats {CHAMPION} version {champion.version} "
            f"({best:.4f}) and takes {CHAMPION}",
        )
    return Decision(
        False,
        f"version {version} ({score}) does not beat {CHAMPION} version {champion.version} "
        f"({best:.4f}); it stays {CHALLENGER}",
    )


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        # A missing alias: the SQL store says INVALID_PARAMETER_VALUE, a server may say
        # RESOURCE_DOES_NOT_EXIST. Anything else (the store failing) must not read as "none".
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise TrackingError(
            f"{name}: cannot read alias {CHAMPION}: {tracking_failure(exc, client.tracking_uri)}"
        ) from exc
