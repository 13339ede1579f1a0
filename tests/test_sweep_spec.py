"""sweep.yaml's checks, the study's helpers and a trial's epoch hook, without running DVC.

The studies here are real Optuna studies in journal files of the test's own folder.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlpipe.errors import ConfigError, Pruned, TrackingError
from mlpipe.search import spec as specs
from mlpipe.search import study as studies
from mlpipe.search import trial as trials
from mlpipe.tracking.orphans import TAG_HOST, TAG_PID, TAG_PID_STARTED
from tests.conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
SWEEP = yaml.safe_load((REPO / "sweep.yaml").read_text())


def load(tmp_path: Path, **changes: object) -> specs.SweepSpec:
    raw = {**SWEEP, **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return specs.load_spec(path, PARAMS)


def with_space(**space: object) -> dict[str, object]:
    return {"space": {**SWEEP["space"], **space}}


def test_the_committed_sweep_is_valid(tmp_path: Path) -> None:
    spec = load(tmp_path)
    assert spec.study == "tutorial-search" and spec.objective.metric == "val_loss"
    assert spec.space["train.batch_size"].integers
    assert not spec.space["train.learning_rate"].integers


def _momentum_when(when: dict[str, object]) -> dict[str, object]:
    return with_space(**{"train.momentum": {"low": 0, "high": 0.9, "when": when}})


LR = "train.learning_rate"
BAD_SWEEPS = {
    "unknown key": ({"studdy": "x"}, r"studdy is not a known key \(allowed here: study,"),
    "empty space": ({"space": {}}, r"sweep\.yaml: space is empty"),
    "low above high": (
        with_space(**{LR: {"low": 0.3, "high": 0.1}}),
        r"space\.train\.learning_rate: low 0\.3 is above high 0\.1",
    ),
    "log from 0": (
        with_space(**{LR: {"low": 0.0, "high": 0.1, "log": True}}),
        r"space\.train\.learning_rate: log needs low above 0",
    ),
    "empty choices": (
        with_space(**{"train.optimizer": {"choices": []}}),
        r"space\.train\.optimizer\.choices is empty",
    ),
    "not a param": (
        with_space(**{"train.lr": {"low": 0.1, "high": 0.2}}),
        r"space\.train\.lr is not a key of params\.yaml",
    ),
    "range refused by params": (
        with_space(**{"train.batch_size": {"low": 0, "high": 100, "step": 100}}),
        r"space\.train\.batch_size: train\.batch_size 0 is refused: .* greater than 0",
    ),
    "choice refused by params": (
        with_space(**{"train.optimizer": {"choices": ["sgd", "lion"]}}),
        r"train\.optimizer 'lion' is refused: .*must be one of sgd, adam, rmsprop",
    ),
    "test metric": (
        {"objective": {"metric": "test_accuracy", "direction": "maximize"}},
        r"objective\.metric must be one of val_loss, val_accuracy \(got 'test_accuracy'\)",
    ),
    "direction": (
        {"objective": {"metric": "val_loss", "direction": "down"}},
        r"objective\.direction must be one of minimize, maximize",
    ),
    "set and space": ({"set": {LR: 0.1}}, r"train\.learning_rate is in both set and space"),
    "set refused": ({"set": {"train.epochs": 0}}, r"set: train\.epochs 0 is refused"),
    "no trials": ({"trials": 0}, r"sweep\.yaml: trials must be an integer greater than 0"),
    "sampler": ({"sampler": {"name": "cmaes"}}, r"sampler\.name must be one of tpe, random"),
    "pruner key": ({"pruner": {"warmup": 3}}, r"pruner\.warmup is not a known key"),
    "pruner key of another pruner": (
        {"pruner": {"name": "median", "max_epochs": 8}},
        r"pruner: max_epochs is for hyperband and successive_halving, not median",
    ),
    "startup for a rung pruner": (
        {"pruner": {"name": "hyperband", "startup_trials": 2}},
        r"pruner: startup_trials is for median, not hyperband",
    ),
    "warmup as long as a trial": (
        {"pruner": {"name": "successive_halving", "warmup_epochs": 10}},
        r"pruner\.warmup_epochs 10 leaves none of a trial's 10 epochs to prune at",
    ),
    "when on another key": (
        _momentum_when({"train.loss": "x"}),
        r"space\.train\.momentum\.when names train\.loss, which is not a key of the space",
    ),
    "when on a value not a choice": (
        _momentum_when({"train.optimizer": "lion"}),
        r"when: train\.optimizer 'lion' is not one of its choices",
    ),
}


@pytest.mark.parametrize(("changes", "message"), BAD_SWEEPS.values(), ids=BAD_SWEEPS.keys())
def test_a_bad_sweep_is_one_line_naming_the_key(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        load(tmp_path, **changes)
    assert "\n" not in str(raised.value)


def test_a_missing_or_non_mapping_sweep_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found; write one"):
        specs.load_spec(tmp_path / "absent.yaml", PARAMS)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match=r"must be a mapping"):
        specs.load_spec(tmp_path / "list.yaml", PARAMS)


def test_the_command_refuses_before_any_trial(tmp_path: Path) -> None:
    """Through the command line: exit 2 and one line, for a bad file and for bad arguments."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SWEEP, "trials": -1}))
    for args in (
        ["run", "--config", str(bad)],
        ["run", "--workers", "0"],
        ["show", "--config", str(bad)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mlpipe.sweep", *args],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "MLPIPE_SWEEP": ""},
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert len([line for line in done.stderr.splitlines() if "error:" in line]) == 1


def test_show_before_the_study_began_says_how_to_begin(tmp_path: Path) -> None:
    spec = load(tmp_path)
    with pytest.raises(ConfigError, match=r"has no trials in .* yet; start it with"):
        studies.load_existing(spec, str(tmp_path / "none.journal"))
    assert not (tmp_path / "none.journal").exists()


def test_suggest_follows_when_and_gives_lists_back(tmp_path: Path) -> None:
    spec = load(tmp_path, sampler={"name": "random", "seed": 3})
    study = studies.open_study(spec, str(tmp_path / "s.journal"))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        chosen = studies.suggest(trial, spec)
        seen.add(chosen["train.optimizer"])
        assert ("train.momentum" in chosen) == (chosen["train.optimizer"] == "sgd")
        assert chosen["model.hidden_units"] in ([784, 32], [256, 128], [512])
        assert chosen["train.batch_size"] % 100 == 0 and isinstance(chosen["train.batch_size"], int)
        assert 1e-4 <= chosen["train.learning_rate"] <= 0.3
        assert studies.decoded(trial.params) == chosen
        specs.check_against_params(spec, PARAMS)  # every chosen value is a valid params.yaml
        values = specs.with_values(PARAMS, specs.overrides(spec, chosen))
        assert values["train"]["epochs"] == 10
        study.tell(trial, 1.0)
    assert seen == {"sgd", "adam", "rmsprop"}


def test_the_grid_sampler_covers_choices_and_steps(tmp_path: Path) -> None:
    space = {
        "train.learning_rate": {"choices": [0.01, 0.1]},
        "train.batch_size": {"low": 100, "high": 300, "step": 100},
    }
    spec = load(tmp_path, sampler={"name": "grid"}, space=space)
    assert studies.grid_size(spec) == 6
    study = studies.open_study(spec, str(tmp_path / "g.journal"))
    points = set()
    for _ in range(6):
        trial = study.ask()
        chosen = studies.suggest(trial, spec)
        points.add((chosen["train.learning_rate"], chosen["train.batch_size"]))
        studies.tell(study, trial, 1.0)  # the last one's sampler asks the study to stop
    assert points == {(lr, b) for lr in (0.01, 0.1) for b in (100, 200, 300)}
    with pytest.raises(ConfigError, match=r"space\.train\.learning_rate: the grid sampler needs"):
        studies.grid_size(load(tmp_path, sampler={"name": "grid"}))


def test_a_study_refuses_another_space_or_direction(tmp_path: Path) -> None:
    journal = str(tmp_path / "s.journal")
    first = studies.open_study(load(tmp_path), journal)
    again = studies.open_study(load(tmp_path), journal)
    assert studies.study_id(first) == studies.study_id(again)
    space = with_space(**{"train.learning_rate": {"low": 1e-3, "high": 0.3, "log": True}})
    with pytest.raises(ConfigError, match=r"began with another space"):
        studies.open_study(load(tmp_path, **space), journal)
    with pytest.raises(ConfigError, match=r"began to minimize its objective"):
        objective = {"metric": "val_loss", "direction": "maximize"}
        studies.open_study(load(tmp_path, objective=objective), journal)


def test_a_storage_url_with_a_password_is_refused() -> None:
    for url in ("postgresql://mlflow:Secret-9@db.example/optuna", "postgresql://u@h/d?password=x"):
        with pytest.raises(ConfigError, match=r"holds a password") as raised:
            studies.open_storage(url)
        assert "Secret-9" not in str(raised.value)


def test_an_unreachable_storage_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import free_port

    with pytest.raises(
        TrackingError,
        match=r"sweep storage postgresql://\*\*\*@127\.0\.0\.1:\d+/optuna is not reachable",
    ) as raised:
        studies.open_storage(f"postgresql://mlflow@127.0.0.1:{free_port()}/optuna")
    assert "\n" not in str(raised.value)


def test_a_trial_of_a_dead_worker_is_failed_and_its_run_closed(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    spec = load(tmp_path)
    study = studies.open_study(spec, str(tmp_path / "s.journal"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, alive = study.ask(), study.ask()
    owner = {TAG_HOST: socket.gethostname(), TAG_PID: str(dead.pid), TAG_PID_STARTED: "1.0"}
    orphan.set_user_attr(studies.OWNER_ATTR, owner)
    orphan.set_user_attr(trials.RUN_ATTR, "run-of-the-dead")
    studies.own(alive)
    other_host = study.ask()
    other_host.set_user_attr(studies.OWNER_ATTR, {**owner, TAG_HOST: "elsewhere"})
    closed_runs: list[str] = []
    assert studies.close_dead_trials(study, closed_runs.append) == [orphan.number]
    assert closed_runs == ["run-of-the-dead"]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING, 2: TrialState.RUNNING}
    assert studies.counts(study) == (0, 2)


def test_surplus_counts_only_earlier_live_trials(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    study = studies.open_study(load(tmp_path), str(tmp_path / "s.journal"))
    first, second, third = study.ask(), study.ask(), study.ask()
    study.tell(first, state=TrialState.FAIL)  # a failed trial leaves room
    assert not studies.surplus(study, third.number, total=2)
    study.tell(second, 1.0)
    assert studies.surplus(study, third.number, total=1)


def link_to(study_path: Path, number: int, pruner: dict[str, object]) -> str:
    link = trials.TrialLink(
        storage=str(study_path), study="tutorial-search", number=number, metric="val_loss",
        direction="minimize", pruner=pruner, parent_run_id="parent",
    )  # fmt: skip
    return link.to_environment()


class FakeTracker:
    run_id = "run-1"

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.logged.append((epoch, metrics))


@pytest.mark.parametrize("warmup", [0, 2])
def test_the_epoch_hook_reports_and_prunes_after_the_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warmup: int
) -> None:
    spec = load(tmp_path)
    journal = tmp_path / "s.journal"
    study = studies.open_study(spec, str(journal))
    good = study.ask()
    for epoch in range(1, 6):
        good.report(0.5 / epoch, epoch)
    study.tell(good, 0.1)
    hopeless = study.ask()
    pruner = {"name": "median", "warmup_epochs": warmup, "startup_trials": 1}
    monkeypatch.setenv(trials.ENV, link_to(journal, hopeless.number, pruner))
    monkeypatch.setenv(trials.DVC_NAME, trials.experiment_name(spec.study, hopeless.number))
    trials.current.cache_clear()
    trials._optuna_trial.cache_clear()
    tracker = FakeTracker()
    hook = trials.epoch_hook(tracker)
    for epoch in range(1, warmup + 1):  # never pruned while warming up
        hook(epoch, {"val_loss": 9.0, "loss": 9.0})
    with pytest.raises(Pruned, match=rf"pruned at epoch {warmup + 1} \(val_loss 9\.0000") as raised:
        hook(warmup + 1, {"val_loss": 9.0, "loss": 9.0})
    assert raised.value.epoch == warmup + 1 and raised.value.exit_code == 3
    assert [epoch for epoch, _ in tracker.logged] == list(range(1, warmup + 2))
    [frozen] = [t for t in study.get_trials() if t.number == hopeless.number]
    assert frozen.user_attrs[trials.PRUNED_ATTR] == warmup + 1
    assert frozen.user_attrs[trials.RUN_ATTR] == "run-1"
    assert sorted(frozen.intermediate_values) == list(range(1, warmup + 2))
    assert trials.run_tags()["mlflow.parentRunId"] == "parent"


def test_outside_a_sweep_the_hook_is_the_trackers_and_nothing_is_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(trials.ENV, raising=False)
    trials.current.cache_clear()
    tracker = FakeTracker()
    assert trials.epoch_hook(tracker) == tracker.log_epoch
    assert trials.run_tags() == {}
    code = "import stages.train, sys; print('optuna' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert shown.stdout.strip() == "False", shown.stderr


def test_a_garbled_trial_link_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trials.ENV, json.dumps({"study": "x"}))
    trials.current.cache_clear()
    with pytest.raises(ConfigError, match=r"MLPIPE_SWEEP: not a sweep's trial"):
        trials.current()
    trials.current.cache_clear()


def test_a_trial_link_under_another_experiment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage reports to its trial only inside that trial's own DVC experiment: another
    `dvc exp run` that took the entry (or none at all) must not write into the trial."""
    link = {
        "storage": "x",
        "study": "s",
        "number": 3,
        "metric": "val_loss",
        "direction": "minimize",
        "pruner": {"name": "none"},
        "parent_run_id": "p",
    }
    monkeypatch.setenv(trials.ENV, json.dumps(link))
    for running, named in (
        ("s-1", "DVC runs experiment 's-1' here: another `dvc exp run` took"),
        (None, "this stage runs in no DVC experiment: a MLPIPE_SWEEP left in the environment"),
    ):
        if running:
            monkeypatch.setenv(trials.DVC_NAME, running)
        else:
            monkeypatch.delenv(trials.DVC_NAME, raising=False)
        trials.current.cache_clear()
        with pytest.raises(
            ConfigError, match=rf"trial 3 of study 's' \('s-3'\), but {re.escape(named)}"
        ):
            trials.current()
    monkeypatch.setenv(trials.DVC_NAME, "s-3")
    trials.current.cache_clear()
    assert trials.current().number == 3
    trials.current.cache_clear()


@pytest.mark.parametrize(
    ("changes", "whole"),
    [
        ({"set": {"train.epochs": 7}}, 7),
        ({"set": {}}, PARAMS["train"]["epochs"]),
        ({"set": {}, **with_space(**{"train.epochs": {"low": 2, "high": 9}})}, "auto"),
        ({"set": {"train.epochs": 7}, "pruner": {"name": "hyperband", "max_epochs": 4}}, 4),
    ],
)
def test_hyperband_knows_a_whole_trials_epochs(
    tmp_path: Path, changes: dict, whole: object
) -> None:
    """Optuna's "auto" learns the most epochs from the first trial that ends, and prunes none
    before: a sweep tells it the epochs when they are fixed."""
    changes = {"pruner": {"name": "hyperband", "warmup_epochs": 1}, **changes}
    pruner = studies.make_pruner(load(tmp_path, **changes).pruner.model_dump())
    assert pruner._max_resource == whole
    assert pruner._min_resource == changes["pruner"].get("warmup_epochs", 0) + 1


def test_successive_halving_stops_a_trial_behind_at_its_first_rung(tmp_path: Path) -> None:
    spec = load(tmp_path, pruner={"name": "successive_halving", "warmup_epochs": 1})
    study = studies.open_study(spec, str(tmp_path / "s.journal"))
    study.pruner = studies.make_pruner(spec.pruner.model_dump())
    ahead = study.ask()
    for epoch, value in ((1, 0.9), (2, 0.5)):
        ahead.report(value, epoch)
        assert not ahead.should_prune()  # alone at its rung (epoch 2): it goes on
    behind = study.ask()
    behind.report(2.0, 1)
    assert not behind.should_prune()  # epoch 1 is warm-up
    behind.report(1.5, 2)
    assert behind.should_prune()  # val_loss 1.5 against 0.5 at the rung of epoch 2
