"""Sweeps for real: `python -m mlpipe.sweep` runs `dvc exp run` trials of the whole pipeline on
5% of real MNIST, and Optuna, DVC and MLflow must agree on what happened."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import client_for, dvc, experiment_data, stage_env

pytestmark = pytest.mark.slow


def write_sweep(repo: Path, **changes: object) -> None:
    sweep = {
        "study": "s",
        "objective": {"metric": "val_loss", "direction": "minimize"},
        "trials": 4,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "set": {"train.epochs": 2},
        "space": {
            "train.learning_rate": {"low": 0.01, "high": 0.3, "log": True},
            "train.optimizer": {"choices": ["sgd", "adam"]},
        },
    }
    (repo / "sweep.yaml").write_text(yaml.safe_dump({**sweep, **changes}))


def sweep(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlpipe.sweep", *args],
        cwd=repo,
        env=stage_env(**env),
        capture_output=True,
        text=True,
        timeout=900,
    )


def shown(repo: Path, **env: str) -> dict:
    result = sweep(repo, "show", "--json", **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def runs_of(repo: Path) -> tuple[object, list]:
    """The study's parent run and its child runs, from the workspace's MLflow store."""
    client = client_for(repo)
    experiment = client.get_experiment_by_name("keras-tutorial")
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [run for run in runs if run.data.tags.get("mlpipe.sweep.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_a_study_on_one_machine_agrees_in_optuna_dvc_and_mlflow(small_repro: Path) -> None:
    write_sweep(small_repro)
    ran = sweep(small_repro, "run", "--workers", "2")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "best: trial" in ran.stdout and "apply it with: dvc exp apply s-" in ran.stdout
    study = shown(small_repro)
    assert [t["state"] for t in study["trials"]] == ["COMPLETE"] * 4
    assert all(t["epochs"] == 2 for t in study["trials"])

    # DVC: one experiment per trial, with the trial's params and its value as metric.
    kept = experiment_data(small_repro)
    assert {f"s-{n}" for n in range(4)} <= set(kept)
    for trial in study["trials"]:
        data = kept[trial["experiment"]]
        params = data["params"]["params.yaml"]["data"]["train"]
        assert params["learning_rate"] == pytest.approx(trial["params"]["train.learning_rate"])
        assert params["optimizer"] == trial["params"]["train.optimizer"]
        assert params["epochs"] == 2
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert metrics["val_loss"] == pytest.approx(trial["value"])
        assert metrics["mlflow_run_id"] == trial["mlflow_run_id"]

    # MLflow: the trials' runs under one parent, with the same params; the parent's figures.
    parent, children = runs_of(small_repro)
    assert parent.info.status == "FINISHED"
    by_trial = {int(run.data.tags["mlpipe.sweep.trial"]): run for run in children}
    assert sorted(by_trial) == [0, 1, 2, 3]
    for trial in study["trials"]:
        run = by_trial[trial["number"]]
        assert run.info.run_id == trial["mlflow_run_id"] and run.info.status == "FINISHED"
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(
            trial["params"]["train.learning_rate"]
        )
    assert parent.data.tags["mlpipe.sweep.best_trial"] == str(study["best"]["number"])
    assert parent.data.params["space.train.optimizer"] == '{"choices": ["sgd", "adam"]}'
    client = client_for(small_repro)
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert figures == {
        "sweep/optimization_history.png",
        "sweep/parallel_coordinate.png",
        "sweep/param_importances.png",
    }

    # Again, with a larger total: only the missing trial runs; the others are left alone.
    again = sweep(small_repro, "run", "--trials", "5")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("sweep: trial ") == 2  # trial 4's start and its end
    after = shown(small_repro)
    assert [t["number"] for t in after["trials"]] == [0, 1, 2, 3, 4]
    assert after["trials"][:4] == study["trials"]
    assert len(runs_of(small_repro)[1]) == 5

    # The README's way to use the best: the command `show` prints.
    best = after["best"]
    applied = dvc(small_repro, "exp", "apply", best["experiment"])
    assert applied.returncode == 0, applied.stderr
    params = yaml.safe_load((small_repro / "params.yaml").read_text())
    assert params["train"]["learning_rate"] == pytest.approx(best["params"]["train.learning_rate"])


def test_a_hopeless_trial_is_pruned_and_kept_nowhere(small_repro: Path) -> None:
    """A grid whose smallest learning rate cannot learn in three epochs: the pruner stops it
    early, its run ends KILLED with the pruning tag, DVC keeps neither an experiment nor a run
    cache entry for it."""
    write_sweep(
        small_repro,
        trials=3,
        sampler={"name": "grid", "seed": 5},  # order: 0.3, 0.1, then the hopeless 1e-5
        pruner={"name": "median", "warmup_epochs": 0, "startup_trials": 1},
        set={"train.epochs": 3, "train.optimizer": "sgd"},
        space={"train.learning_rate": {"choices": [0.3, 0.1, 1.0e-5]}},
    )
    ran = sweep(small_repro, "run")
    assert ran.returncode == 0, ran.stderr[-3000:]
    trials = {t["params"]["train.learning_rate"]: t for t in shown(small_repro)["trials"]}
    hopeless = trials[1.0e-5]
    assert hopeless["state"] == "PRUNED" and hopeless["epochs"] < 3
    assert hopeless["experiment"] is None
    assert trials[0.3]["state"] == "COMPLETE"
    assert f"trial {hopeless['number']} PRUNED at epoch {hopeless['epochs']}" in ran.stderr

    run = client_for(small_repro).get_run(hopeless["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["mlpipe.pruned_at_epoch"] == str(hopeless["epochs"])
    assert len(run.data.metrics) and "test_accuracy" not in run.data.metrics
    assert f"s-{hopeless['number']}" not in experiment_data(small_repro)

    # The same params outside the sweep: DVC trains them (no run cache entry restores them).
    again = dvc(small_repro, "exp", "run", "--temp", "-S", "train.learning_rate=1e-05",
                "-S", "train.epochs=3", "-S", "train.optimizer=sgd")  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Running stage 'train'" in again.stdout


def test_a_worker_killed_mid_trial_leaves_nothing_running(small_repro: Path) -> None:
    """kill -9 of the sweep and everything it started, during a trial's training: the next run
    fails that trial, ends its MLflow run, and still reaches the total."""
    import optuna
    import psutil

    write_sweep(
        small_repro,
        trials=2,
        set={"train.epochs": 40, "train.batch_size": 100},
        space={"train.learning_rate": {"low": 0.01, "high": 0.1, "log": True}},
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "mlpipe.sweep", "run"],
        cwd=small_repro,
        env=stage_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal = str(small_repro / ".sweeps/s.journal")
    deadline = time.monotonic() + 180
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        time.sleep(1)
        if os.path.exists(journal):
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(journal)
            )
            trials = optuna.load_study(study_name="s", storage=storage).get_trials()
            run_id = trials[0].user_attrs.get("mlflow_run_id") if trials else None
    assert run_id, "the first trial never started training"
    time.sleep(2)  # an epoch or two into it
    family = [worker.pid] + [child.pid for child in psutil.Process(worker.pid).children(True)]
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    worker.wait()
    assert client_for(small_repro).get_run(run_id).info.status == "RUNNING"  # as left

    write_sweep(
        small_repro,
        trials=2,
        set={"train.epochs": 40, "train.batch_size": 100},
        space={"train.learning_rate": {"low": 0.01, "high": 0.1, "log": True}},
    )
    again = sweep(small_repro, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 0 was left RUNNING by a worker that died" in again.stderr
    states = [t["state"] for t in shown(small_repro)["trials"]]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    client = client_for(small_repro)
    assert client.get_run(run_id).info.status == "KILLED"
    parent, children = runs_of(small_repro)
    assert [run.info.status for run in children].count("RUNNING") == 0
    assert parent.info.status == "FINISHED"


def test_a_trials_dvc_run_reproduces_its_own_entry_and_no_other(tmp_path: Path) -> None:
    """DVC's `exp run --temp` reproduces every entry in the workspace's experiment stash, its
    own and then any another process stashed meanwhile, under its own environment; a trial's
    (mlpipe.search.dvc_exp) reproduces the one it queued and leaves the other's alone."""
    from mlpipe.search.worker import experiment_refs

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("x: 1\n")
    record = (
        "import os; open('out.txt', 'w')"
        ".write(os.environ['DVC_EXP_NAME'] + open('params.yaml').read())"
    )
    stage = {
        "cmd": f'python -c "{record}"',
        "params": ["x"],
        "outs": [{"out.txt": {"cache": False}}],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"echo": stage}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    for command in (["init", "-q"], ["add", "."], ["commit", "-qm", "echo"]):
        subprocess.run([*git, *command], cwd=repo, check=True)
    assert dvc(repo, "init", "-q").returncode == 0
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "dvc"], cwd=repo, check=True)

    # Another process's entry, stashed and not yet taken (the moment two trials start together).
    stash = (
        "from dvc.repo import Repo; exps = Repo('.').experiments; "
        "exps.queue_one(exps.tempdir_queue, params={'params.yaml': ['x=2']}, name='other')"
    )
    subprocess.run([sys.executable, "-c", stash], cwd=repo, check=True, env=stage_env())
    command = ["exp", "run", "--temp", "-n", "mine", "-S", "x=3"]
    ours = subprocess.run(
        [sys.executable, "-m", "mlpipe.search.dvc_exp", *command],
        cwd=repo,
        env=stage_env(),
        capture_output=True,
        text=True,
    )
    assert ours.returncode == 0, ours.stderr
    refs = experiment_refs(repo)
    assert set(refs) == {"mine", "stash"}  # the other's entry is still in the stash
    made = subprocess.run(["git", "show", f"{refs['mine']}:out.txt"], cwd=repo, capture_output=True)
    assert made.stdout == b"minex: 3\n"

    # DVC's own command, the control: it runs its entry, then the other one still stashed.
    theirs = dvc(repo, "exp", "run", "--temp", "-n", "third", "-S", "x=4")
    assert theirs.returncode == 0, theirs.stderr
    assert set(experiment_refs(repo)) == {"mine", "third", "other"}  # and the stash is empty
