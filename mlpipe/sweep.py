"""Sweeps: Optuna proposes the params, each trial is a DVC experiment and an MLflow child run.

    python -m mlpipe.sweep run [--config sweep.yaml] [--trials N] [--workers K] [--storage URL]
    python -m mlpipe.sweep show [--config sweep.yaml] [--storage URL] [--json]

`run` works on the study until it has its total of COMPLETE and PRUNED trials; run it again,
here or on another machine sharing `--storage`, and it goes on from there. `show` prints the
study and the one command that applies its best trial. README: Sweeps.
Exit codes: 0 done; 1 a trial kept failing, or the storage or tracking store cannot be used;
2 a bad sweep.yaml or argument; 130 interrupted (SIGINT); 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from mlpipe.config import load_params, parse_params, parse_yaml
from mlpipe.errors import ConfigError
from mlpipe.paths import HERE, Layout
from mlpipe.runner import execute
from mlpipe.search import spec as specs
from mlpipe.search import study as studies
from mlpipe.search.worker import existing_experiments, experiment_name, experiment_ref
from mlpipe.tracking.run_lifecycle import git_commit

log = logging.getLogger("sweep")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mlpipe.sweep", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "show"):
        command = commands.add_parser(name)
        command.add_argument("--config", type=Path, default=Path("sweep.yaml"))
        command.add_argument(
            "--storage", help="an Optuna storage URL; default .sweeps/<study>.journal"
        )
        if name == "run":
            command.add_argument(
                "--trials", type=_positive, help="the study's total (sweep.yaml's trials)"
            )
            command.add_argument(
                "--workers", type=_positive, default=1, help="trials at a time here"
            )
        else:
            command.add_argument("--json", action="store_true", help="one JSON object")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def _load(args: argparse.Namespace, layout: Layout) -> tuple[specs.SweepSpec, str, dict[str, Any]]:
    load_params(layout.params_file)  # the workspace's own params first: one line if bad
    raw = parse_yaml(layout.params_file.read_text(encoding="utf-8"))
    spec = specs.load_spec(args.config, raw)
    storage = args.storage or studies.default_storage(layout.workspace, spec.study)
    if "://" not in storage:  # a journal file: trials run in DVC's temp copies, elsewhere
        storage = str(Path(storage).resolve())
    return spec, storage, raw


def run(args: argparse.Namespace, layout: Layout = HERE) -> None:
    from mlpipe.search.parent_run import close_parent, open_parent
    from mlpipe.search.worker import Workers
    from mlpipe.tracking.run_lifecycle import connect

    spec, storage, raw = _load(args, layout)
    _require_git_commit(layout.workspace)
    total = args.trials or spec.trials
    if spec.sampler.name == "grid":
        points = studies.grid_size(spec)
        if total > points:
            log.warning("the grid has %d points: the study ends after %d trials", points, points)
            total = points
    # The tracking store first: the study's creator makes its parent run right after it.
    experiment = parse_params(
        specs.with_values(raw, spec.set), "params.yaml"
    ).mlflow.experiment_name
    client, experiment_id = connect(experiment, layout.workspace)
    study, created = studies.begin_study(spec, storage)
    stale = existing_experiments(layout.workspace, spec.study) if created else []
    if stale:
        studies.delete_study(spec.study, storage)  # as if never begun
        raise ConfigError(
            f"study {spec.study} is new, but DVC experiments {stale[0]} ... from an earlier "
            f"study of that name exist; `dvc exp remove {' '.join(stale)}`, or give this "
            "search another study name"
        )
    parent = open_parent(client, experiment_id, spec, study, created)
    studies.close_dead_trials(study, lambda run_id: _end_if_running(client, run_id))
    done, running = studies.counts(study)
    log.info(
        "study %s: %d of %d trials done, %d running elsewhere; %d worker(s) here (storage %s)",
        spec.study,
        done,
        total,
        running,
        args.workers,
        studies.shown_storage(storage),
    )
    workers = Workers(spec, layout.workspace, storage, study, total, parent, args.workers)
    end = "FAILED"
    try:
        workers.run()
        end = "FINISHED"
    except BaseException as exc:
        end = "FAILED" if isinstance(exc, Exception) else "KILLED"
        raise
    finally:
        close_parent(client, parent, spec, study, total, end)
    print(summary(spec, study, layout.workspace))


def _end_if_running(client: Any, run_id: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")
    except MlflowException:
        pass  # a run of another store (the trial ran on another machine)


def _require_git_commit(workspace: Path) -> None:
    if git_commit(workspace) is None:
        raise ConfigError(
            f"{workspace} is not a Git repository with a commit: each trial is a DVC experiment "
            "of a commit; `git init` and commit the pipeline first"
        )


def show(args: argparse.Namespace, layout: Layout = HERE) -> None:
    spec, storage, _ = _load(args, layout)
    study = studies.load_existing(spec, storage)
    studies.close_dead_trials(study, lambda run_id: None)  # MLflow's side: the next run or stage
    if args.json:
        print(json.dumps(as_json(spec, study, layout.workspace), indent=2))
    else:
        print(summary(spec, study, layout.workspace))


def as_json(spec: specs.SweepSpec, study: Any, workspace: Path) -> dict[str, Any]:
    """The study as one object: its trials, and the best one."""
    from mlpipe.search.trial import RUN_ATTR

    trials = []
    for trial in study.get_trials(deepcopy=False):
        name = experiment_name(spec.study, trial.number)
        trials.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": studies.decoded(trial.params),
                "value": trial.value,
                "epochs": len(trial.intermediate_values),
                # A pruned or failed trial keeps no experiment; a complete one is kept where it
                # ran, and pushed to origin when the repository has remotes.
                "experiment": name if trial.state.name == "COMPLETE" else None,
                "mlflow_run_id": trial.user_attrs.get(RUN_ATTR),
            }
        )
    best = None
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    if complete:
        top = study.best_trial
        best = {
            "number": top.number,
            "value": top.value,
            "params": studies.decoded(top.params),
            "experiment": experiment_name(spec.study, top.number),
        }
    return {
        "study": spec.study,
        "direction": spec.objective.direction,
        "trials": trials,
        "best": best,
    }


def summary(spec: specs.SweepSpec, study: Any, workspace: Path) -> str:
    """The study as a table, and the command that applies its best trial."""
    shown = as_json(spec, study, workspace)
    header = (
        "trial",
        "state",
        spec.objective.metric,
        "epochs",
        "experiment",
        "mlflow run",
        "params",
    )
    rows = [header]
    for trial in shown["trials"]:
        value = "-" if trial["value"] is None else f"{trial['value']:.6f}"
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in trial["params"].items())
        run_id = trial["mlflow_run_id"] or "-"
        rows.append(
            (
                str(trial["number"]),
                trial["state"],
                value,
                str(trial["epochs"]),
                trial["experiment"] or "-",
                run_id[:12],
                params,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    best = shown["best"]
    if best is None:
        lines.append(f"study {spec.study}: no COMPLETE trial yet")
        return "\n".join(lines)
    name = best["experiment"]
    apply = f"dvc exp apply {name}"
    if experiment_ref(workspace, name) is None:
        apply = f"dvc exp pull origin {name} && {apply}"
    lines.append(
        f"best: trial {best['number']} ({spec.objective.metric} {best['value']:.6f}), "
        f"experiment {name}; apply it with: {apply}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    return execute("sweep", lambda: run(args) if args.command == "run" else show(args))


if __name__ == "__main__":
    sys.exit(main())
