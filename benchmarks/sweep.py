"""Benchmark: what a sweep costs over plain `dvc exp run`, and what pruning saves.

Run by hand from the repository root, with a folder holding mnist.npz:

    DATA_MIRROR=/path/to/mirror .venv/bin/python benchmarks/sweep.py [--fraction 0.5] [--epochs 8]

In copies of the project under benchmarks/work/sweep/ (one per measurement, so that no run
cache is shared), it measures:
- overhead: three trials of a one-worker grid study against the same three param sets run as
  plain `dvc exp run --temp`, one after the other (distinct learning rates, so DVC's run cache
  restores nothing);
- pruning: a 12-trial study over a space with bad regions (learning rates from 1e-5 to 1, with
  sgd, adam and rmsprop), random sampler with one seed, so every study tries the same points:
  unpruned, and with the median, hyperband and successive-halving pruners, wall time and best
  val_accuracy of each.
It writes benchmarks/sweep_results.csv and prints the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / "work" / "sweep"
sys.path.insert(0, str(REPO))
from tests.conftest import project_copy, run_git  # noqa: E402
from tests.fakes import set_params  # noqa: E402

BIN = str(Path(sys.executable).parent)
# The studies of the pruning measure, each in its own copy: the same twelve points, three pruners.
PRUNERS = {
    "unpruned": {"name": "none"},
    "median": {"name": "median", "warmup_epochs": 2, "startup_trials": 3},
    "successive_halving": {"name": "successive_halving", "warmup_epochs": 0},
    "hyperband": {"name": "hyperband", "warmup_epochs": 0},
}


SPEED_DRIFT = 0.15  # a study trained this much slower or faster does not compare


def command(workspace: Path, *args: str) -> float:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.update(GIT_AUTHOR_NAME="bench", GIT_COMMITTER_NAME="bench")
    env.update(GIT_AUTHOR_EMAIL="bench@example.com", GIT_COMMITTER_EMAIL="bench@example.com")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *args], cwd=workspace, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def seconds_per_epoch(workspace: Path, study: str) -> float:
    """The machine's training speed during a study, from its trials' own lines (`trained N
    epochs in X s`): the studies compare only where it stayed the same."""
    import re

    found = [
        (int(epochs), float(seconds))
        for log in (workspace / ".sweeps" / study).glob("*.log")
        for epochs, seconds in re.findall(r"trained (\d+) epochs in ([\d.]+) s", log.read_text())
    ]
    return sum(s for _, s in found) / sum(e for e, _ in found)


def write_sweep(workspace: Path, **sweep: object) -> None:
    (workspace / "sweep.yaml").write_text(yaml.safe_dump(sweep))


def shown(workspace: Path) -> dict:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [sys.executable, "-m", "mlpipe.sweep", "show", "--json"],
        cwd=workspace, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fraction", type=float, default=0.5, help="preprocess.train_fraction")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--pruning-only", action="store_true",
        help="only the pruned/unpruned studies, into benchmarks/sweep_pruning_results.csv",
    )  # fmt: skip
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    base = project_copy(WORK / "base")
    set_params(base, preprocess__train_fraction=args.fraction, train__epochs=args.epochs)
    command(base, "-m", "dvc", "repro")
    run_git(base, "add", "-A")
    run_git(base, "commit", "-q", "-m", "baseline")
    copies = {}
    for name in ("plain", "sweep", *PRUNERS):
        copies[name] = WORK / name
        shutil.copytree(base, copies[name], symlinks=True)

    rates = (0.02, 0.03, 0.04)
    plain = 0.0 if args.pruning_only else sum(
        command(copies["plain"], "-m", "dvc", "exp", "run", "--temp", "-n", f"plain-{i}",
                "-S", f"train.learning_rate={rate}")
        for i, rate in enumerate(rates)
    )  # fmt: skip
    write_sweep(
        copies["sweep"], study="overhead",
        objective={"metric": "val_loss", "direction": "minimize"},
        trials=3, sampler={"name": "grid", "seed": 0}, pruner={"name": "none"},
        space={"train.learning_rate": {"choices": list(rates)}},
    )  # fmt: skip
    swept = 0.0 if args.pruning_only else command(copies["sweep"], "-m", "mlpipe.sweep", "run")

    results = {}
    for name, pruner in PRUNERS.items():
        write_sweep(
            copies[name], study=name,
            objective={"metric": "val_accuracy", "direction": "maximize"}, trials=12,
            sampler={"name": "random", "seed": 7}, pruner=pruner,
            space={
                "train.learning_rate": {"low": 1.0e-5, "high": 1.0, "log": True},
                "train.optimizer": {"choices": ["sgd", "adam", "rmsprop"]},
            },
        )  # fmt: skip
        seconds = command(copies[name], "-m", "mlpipe.sweep", "run")
        study = shown(copies[name])
        states = [t["state"] for t in study["trials"]]
        speed = seconds_per_epoch(copies[name], name)
        results[name] = (seconds, study["best"]["value"], states.count("PRUNED"), speed)

    rows = (
        []
        if args.pruning_only
        else [
            ("three plain dvc exp run, total", round(plain, 2), "s", ""),
            ("three-trial sweep, total", round(swept, 2), "s", ""),
            ("sweep overhead per trial", round(100 * (swept / plain - 1), 1), "%", "< 10"),
        ]
    )
    unpruned_s, unpruned_best, _, unpruned_speed = results["unpruned"]
    rows += [
        ("12 trials unpruned: wall time", round(unpruned_s, 1), "s", ""),
        ("12 trials unpruned: best val_accuracy", unpruned_best, "", ""),
        ("12 trials unpruned: training speed", round(unpruned_speed, 3), "s per epoch", ""),
    ]
    drifted = []
    for name in [name for name in PRUNERS if name != "unpruned"]:
        seconds, best, count, speed = results[name]
        share, below = 100 * seconds / unpruned_s, 100 * (1 - best / unpruned_best)
        if abs(speed / unpruned_speed - 1) > SPEED_DRIFT:
            drifted.append(name)
        rows += [
            (f"12 trials {name}: wall time", round(seconds, 1), "s", ""),
            (f"12 trials {name}: training speed", round(speed, 3), "s per epoch", ""),
            (f"12 trials {name}: best val_accuracy", best, "", ""),
            (f"12 trials {name}: trials pruned", count, "", ""),
            (f"{name}: time, share of unpruned", round(share, 1), "%", "<= 60"),
            (f"{name}: best, below unpruned", round(below, 2), "%", "<= 1"),
        ]
    machine = f"{os.cpu_count()}-core {platform.machine()}, {platform.system()}"
    name = "sweep_pruning_results.csv" if args.pruning_only else "sweep_results.csv"
    with open(REPO / "benchmarks" / name, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["measure", "value", "unit", "target"])
        writer.writerow(
            [f"setting: train_fraction {args.fraction}, epochs {args.epochs}", "", "", ""]
        )
        writer.writerows(rows)
    print(f"machine: {machine}; train_fraction {args.fraction}, {args.epochs} epochs")
    for measure, value, unit, target in rows:
        print(f"{measure}: {value} {unit}" + (f" (target {target})" if target else ""))
    if drifted:
        raise SystemExit(
            f"the machine's training speed changed by more than {SPEED_DRIFT:.0%} between the "
            f"unpruned study and {', '.join(drifted)}: those shares do not compare; run again"
        )


if __name__ == "__main__":
    main()
