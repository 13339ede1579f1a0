"""DVC experiments and MLflow runs joined: named runs, baseline tags, a queue run two at a time.

Real MNIST from the mirror, cut to 5% and two epochs (the session's small repro) so each
experiment takes seconds.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    copy_of,
    dvc,
    experiment_data,
    needs_mirror,
    run_git,
    run_queue_of_two,
)

pytestmark = [pytest.mark.slow, needs_mirror]


def exp_rows(repo: Path) -> dict[str, dict]:
    """Experiment name -> its metrics from `dvc exp show --json`."""
    return {
        name: data.get("metrics", {}).get("reports/metrics.json", {}).get("data", {})
        for name, data in experiment_data(repo).items()
    }


@pytest.fixture(scope="module")
def baseline(small_repro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The session's small repro (5% of MNIST, two epochs, committed), this module's copy."""
    repo = copy_of(small_repro_world, tmp_path_factory.mktemp("experiments") / "repo")
    return repo, run_git(repo, "rev-parse", "HEAD").strip()


def mlflow_runs(repo: Path) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs(["1"])
    return client, {run.info.run_name: run for run in runs}


@pytest.fixture(scope="module")
def lr_high(baseline: tuple[Path, str]) -> tuple[Path, str]:
    """The baseline with one named experiment run on it."""
    repo, _ = baseline
    result = dvc(repo, "exp", "run", "-n", "lr-high", "-S", "train.learning_rate=0.1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return baseline


def test_named_experiment_is_a_named_mlflow_run(lr_high: tuple[Path, str]) -> None:
    repo, commit = lr_high
    _, runs = mlflow_runs(repo)
    run = runs["lr-high"]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.1"
    assert run.data.tags["dvc.exp_name"] == "lr-high"
    assert run.data.tags["dvc.baseline_rev"] == commit
    assert exp_rows(repo)["lr-high"]["mlflow_run_id"] == run.info.run_id


def test_readme_exp_show_fits_80_columns(lr_high: tuple[Path, str]) -> None:
    """The README's `dvc exp show` line: what an experiment changed and scored, in 80 columns."""
    repo, _ = lr_high
    readme = (REPO / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("dvc exp show --only"))
    args = shlex.split(command)[1:]
    shown = dvc(repo, *args, COLUMNS="80")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    assert "test_accuracy" in shown.stdout and "learning_rate" in shown.stdout
    assert "lr-high" in shown.stdout


def test_queue_of_two_runs_two_at_a_time_into_one_store(baseline: tuple[Path, str]) -> None:
    """With the README's relative URI, as a user would set it: the queued runs must land in
    the workspace's mlflow.db, not in DVC's temporary copies, which are deleted."""
    repo, commit = baseline
    relative = {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    names = run_queue_of_two(repo, **relative)
    client, runs = mlflow_runs(repo)
    rows = exp_rows(repo)
    for name in names:
        run = runs[name]
        assert run.info.status == "FINISHED"
        assert run.data.tags["dvc.baseline_rev"] == commit
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 2
        assert rows[name]["mlflow_run_id"] == run.info.run_id
        # The queued run's artifacts are in the workspace, not in DVC's throwaway copy.
        assert run.info.artifact_uri.startswith((repo / "mlartifacts").as_uri())
        logs = dvc(repo, "queue", "logs", name).stdout
        assert "database is locked" not in logs
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]
    learning_rates = sorted(runs[name].data.params["train.learning_rate"] for name in names)
    assert learning_rates == ["0.05", "0.2"]
    # The champion is the best evaluated version, whichever evaluate finished last.
    champion = client.get_model_version_by_alias("keras-tutorial-mnist", "champion")
    versions = client.search_model_versions("name = 'keras-tutorial-mnist'")
    best = max(float(version.tags["val_accuracy"]) for version in versions)
    assert float(champion.tags["val_accuracy"]) == best  # ranked on validation


def test_refused_experiment_says_how_to_restore_params(baseline: tuple[Path, str]) -> None:
    """DVC writes `-S` values into params.yaml before the stages run; a refused combination
    leaves them there, and the error says how to get the committed ones back."""
    repo, _ = baseline
    result = dvc(repo, "exp", "run", "-S", "train.optimizer=adam", "-S", "train.momentum=0.9")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "train.momentum" in output
    assert "`git checkout params.yaml` restores the committed file" in output
    assert "momentum: 0.9" in (repo / "params.yaml").read_text()
    run_git(repo, "checkout", "params.yaml")
    assert run_git(repo, "status", "--porcelain", "params.yaml") == ""
