"""The study's parent MLflow run: one per study, whichever machine started it.

Every trial's pipeline run names it in MLflow's own `mlflow.parentRunId` tag, so the MLflow UI
shows the study as one expandable row of its experiment. The parent holds the search (space,
sampler, pruner, objective) as params, the best trial as tags and a metric, and Optuna's own
figures (optimisation history, parallel coordinates, parameter importances) as artifacts.
The process that created the Optuna study (Optuna lets exactly one) makes the parent and names
it in the study; workers that join, on this machine or others, use that one. It is tagged with
the study's own id: a study made again under an old name gets a parent of its own.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from mlpipe.paths import scratch_dir
from mlpipe.search.spec import SweepSpec
from mlpipe.search.trial import STUDY_TAG

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

log = logging.getLogger("sweep")

ROLE_TAG = "mlpipe.sweep.role"
PARENT_ATTR = "mlpipe.parent_run_id"
PARENT_WAIT_SECONDS = 60  # for the study's creator to reach its tracking store
ID_TAG = "mlpipe.sweep.study_id"  # the Optuna study's own id (a name may be used again)
FIGURES = "sweep"  # the artifact folder of the figures


def parent_params(spec: SweepSpec) -> dict[str, str]:
    """The search as MLflow params: what made the study, fixed for its life."""
    params = {
        "objective.metric": spec.objective.metric,
        "objective.direction": spec.objective.direction,
        "sampler.name": spec.sampler.name,
        "sampler.seed": str(spec.sampler.seed),
        **{f"pruner.{key}": str(value) for key, value in spec.pruner.model_dump().items()},
        **{f"set.{key}": json.dumps(value) for key, value in spec.set.items()},
    }
    for key, dimension in spec.space.items():
        shown = {k: v for k, v in dimension.model_dump().items() if v not in (None, False)}
        params[f"space.{key}"] = json.dumps(shown, sort_keys=True)
    return params


def open_parent(
    client: MlflowClient, experiment_id: str, spec: SweepSpec, study: optuna.Study, created: bool
) -> str:
    """The id of the study's parent run, RUNNING again.

    The process that created the study makes it; one that joined waits for its id in the
    study. A parent that this tracking store does not have (the study began against another
    store, or its creator died first) is found by the study's id, or made.
    """
    from mlpipe.search.study import study_id, wait_for_attr

    known = study.user_attrs.get(PARENT_ATTR)
    if known is None and not created:
        log.info("waiting for the worker that began study %s to make its MLflow run", spec.study)
        known = wait_for_attr(study, PARENT_ATTR, PARENT_WAIT_SECONDS)
    if known is None or not _exists(client, known):
        found = _parents(client, experiment_id, study_id(study))
        known = found[0].info.run_id if found else _create(client, experiment_id, spec, study)
        study.set_user_attr(PARENT_ATTR, known)
    client.update_run(known, status="RUNNING")
    return known


def _create(client: MlflowClient, experiment_id: str, spec: SweepSpec, study: optuna.Study) -> str:
    from mlpipe.search.study import study_id

    tags = {STUDY_TAG: spec.study, ROLE_TAG: "parent", ID_TAG: study_id(study)}
    run_id = client.create_run(experiment_id, run_name=spec.study, tags=tags).info.run_id
    client.log_batch(run_id, params=_as_params(parent_params(spec)))
    return run_id


def _exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _parents(client: MlflowClient, experiment_id: str, identity: str) -> list:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ID_TAG}` = '{identity}'")
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def _as_params(params: dict[str, str]) -> list:
    from mlflow.entities import Param

    return [Param(key, value[:6000]) for key, value in params.items()]


def close_parent(
    client: MlflowClient, parent: str, spec: SweepSpec, study: optuna.Study, total: int, end: str
) -> None:
    """The best trial and the figures on the parent; FINISHED when the study has its total,
    `end` (KILLED, FAILED) when this run stopped short, RUNNING while other workers run."""
    from optuna.trial import TrialState

    from mlpipe.search.study import counts, decoded
    from mlpipe.search.trial import experiment_name

    trials = study.get_trials(deepcopy=False)
    states = {state.name.lower(): 0 for state in TrialState}
    for trial in trials:
        states[trial.state.name.lower()] += 1
    tags = {f"mlpipe.sweep.{state}": str(count) for state, count in states.items() if count}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        tags.update(
            {
                "mlpipe.sweep.best_trial": str(best.number),
                "mlpipe.sweep.best_value": f"{best.value:.6f}",
                "mlpipe.sweep.best_experiment": experiment_name(spec.study, best.number),
                "mlpipe.sweep.best_params": json.dumps(decoded(best.params), sort_keys=True),
            }
        )
        client.log_metric(parent, f"best_{spec.objective.metric}", best.value)
        _log_figures(client, parent, study, len(complete))
    for key, value in tags.items():
        _set_tag(client, parent, key, value)
    done, running = counts(study)
    if done >= total:
        client.set_terminated(parent, "FINISHED")
    elif not running:
        client.set_terminated(parent, end)


def _set_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    """Set a tag that another machine's worker may be setting at the same moment: MLflow's
    store inserts a tag it did not find, so two first writes collide on its key (seen in CI:
    PostgreSQL's UniqueViolation on tag_pk); the next attempt finds it and updates it."""
    import time

    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            client.set_tag(run_id, key, value)
            return
        except MlflowException as exc:
            collided = "duplicate key" in str(exc) or "UNIQUE constraint failed" in str(exc)
            if not collided or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _log_figures(client: MlflowClient, parent: str, study: optuna.Study, complete: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as figures

    plots = {"optimization_history": figures.plot_optimization_history}
    plots["parallel_coordinate"] = figures.plot_parallel_coordinate
    if complete >= 2:  # importances need at least two finished trials
        plots["param_importances"] = figures.plot_param_importances
    with scratch_dir("sweep") as folder:
        for name, plot in plots.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Optuna marks these experimental
                    axes = plot(study)
                figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
                figure.set_size_inches(10, 6)
                figure.tight_layout()
                figure.savefig(Path(folder) / f"{name}.png", dpi=100)
                plt.close(figure)
            except Exception as exc:  # a figure Optuna cannot draw for this study: say so
                log.warning("sweep figure %s not drawn: %s", name, exc)
        client.log_artifacts(parent, folder, FIGURES)
