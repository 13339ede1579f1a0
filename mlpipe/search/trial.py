"""A pipeline run that is a sweep's trial: what its stages tell the study.

`python -m mlpipe.sweep run` starts each trial's `dvc exp run` with `MLPIPE_SWEEP` in the
environment (a JSON object: the study's storage and name, the trial's number, the objective
and the pruner). Train reports the objective's value at each epoch and stops when the pruner
says so (`Pruned`: the stage exits 3, its MLflow run ends KILLED, DVC keeps no experiment).
The trial's value is the final model's validation metric in the experiment's
reports/metrics.json, as `dvc exp show` shows it. Outside a sweep every function here does
nothing, and Optuna is not imported.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from mlpipe.errors import ConfigError, Pruned

if TYPE_CHECKING:
    from optuna.trial import Trial

    from mlpipe.tracking.tracker import Tracker

log = logging.getLogger(__name__)

ENV = "MLPIPE_SWEEP"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests the run under its parent
TRIAL_TAG = "mlpipe.sweep.trial"
STUDY_TAG = "mlpipe.sweep.study"
RUN_ATTR = "mlflow_run_id"
PRUNED_ATTR = "pruned_at_epoch"
DVC_NAME = "DVC_EXP_NAME"  # set by DVC for the stages of an experiment it reproduces


def experiment_name(study: str, number: int) -> str:
    """The DVC experiment of a study's trial (also its MLflow run's name)."""
    return f"{study}-{number}"


@dataclass(frozen=True)
class TrialLink:
    """Which trial of which study this pipeline run is, and how it is judged."""

    storage: str
    study: str
    number: int
    metric: str
    direction: str
    pruner: dict[str, Any]
    parent_run_id: str

    def to_environment(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@cache
def current() -> TrialLink | None:
    """The trial this process belongs to, from `MLPIPE_SWEEP`; None outside a sweep."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return None
    try:
        link = TrialLink(**json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{ENV}: not a sweep's trial ({exc}); unset it") from exc
    expected, running = experiment_name(link.study, link.number), os.environ.get(DVC_NAME)
    if running != expected:  # what a trial reports must be its own experiment's
        named = f"{ENV} names trial {link.number} of study {link.study!r} ({expected!r})"
        if not running:
            raise ConfigError(
                f"{named}, but this stage runs in no DVC experiment: a {ENV} left in the "
                "environment? unset it (`python -m mlpipe.sweep run` sets it for its trials)"
            )
        raise ConfigError(
            f"{named}, but DVC runs experiment {running!r} here: another `dvc exp run` took "
            "the trial's entry from DVC's stash; run the sweep again, with no `dvc exp run` "
            "beside it"
        )
    return link


@cache
def _optuna_trial() -> Trial:
    import optuna
    from optuna.trial import Trial

    from mlpipe.search.study import make_pruner, open_storage

    link = current()
    storage = open_storage(link.storage)
    study = optuna.load_study(
        study_name=link.study, storage=storage, pruner=make_pruner(link.pruner)
    )
    study_id = storage.get_study_id_from_name(link.study)
    return Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, link.number))


def run_tags() -> dict[str, str]:
    """The tags that put a trial's MLflow run under its study's parent run."""
    link = current()
    if link is None:
        return {}
    return {PARENT_TAG: link.parent_run_id, STUDY_TAG: link.study, TRIAL_TAG: str(link.number)}


def epoch_hook(tracker: Tracker) -> Callable[[int, dict[str, float]], None]:
    """The train stage's epoch hook: the run's metrics to MLflow, and, in a sweep, the epoch's
    objective to the trial, stopping here when the pruner says so."""
    link = current()
    if link is None:
        return tracker.log_epoch
    trial = _optuna_trial()
    trial.set_user_attr(RUN_ATTR, tracker.run_id)

    def log_and_report(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_epoch(epoch, metrics)
        value = metrics[link.metric]
        trial.report(value, epoch)
        if trial.should_prune():
            trial.set_user_attr(PRUNED_ATTR, epoch)  # the sweep tells PRUNED on this
            raise Pruned(
                epoch,
                f"trial {link.number} of study {link.study} pruned at epoch {epoch} "
                f"({link.metric} {value:.4f}, behind the earlier trials at this epoch)",
            )

    return log_and_report
