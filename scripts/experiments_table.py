"""Run the README's experiments and write their table: the numbers a user reproduces.

    python scripts/experiments_table.py            (DATA_MIRROR set if offline; ~20 minutes)
    python scripts/experiments_table.py --render   (only rewrite the README from the results)

Each row is one `dvc exp run --queue -n NAME -S ...` on the committed params (the default
network unless the row says cnn, MNIST, 20 epochs, batch 500, seed 42), run one at a time in
DVC's temporary copies, so the workspace is left as it was. The measured metrics and training
seconds (the train stage's `mlpipe.fit_seconds` in MLflow) go to docs/experiments.json, and
the README's table between its `experiments-table` markers is rewritten from that file, so the
README shows exactly what the sweep measured (a test checks that the two agree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mlpipe.atomic import json_text, write_text  # noqa: E402

RESULTS = ROOT / "docs" / "experiments.json"
README = ROOT / "README.md"
START = "<!-- experiments-table: written by scripts/experiments_table.py -->"
END = "<!-- experiments-table end -->"
PREFIX = "table-"  # DVC experiment names, apart from the user's own
TIMEOUT_S = 3600.0
# (name, model.type, optimizer, learning rate, momentum or None): the tutorial's row first.
ROWS = (
    ("tutorial", "mlp", "sgd", 0.01, 0.0),
    ("sgd-lr0.1", "mlp", "sgd", 0.1, 0.0),
    ("sgd-momentum", "mlp", "sgd", 0.1, 0.9),
    ("rmsprop", "mlp", "rmsprop", 0.001, None),
    ("adam", "mlp", "adam", 0.001, None),
    ("cnn-adam", "cnn", "adam", 0.001, None),
)


def dvc(*args: str, capture: bool = False) -> str:
    """Run DVC in the repository; its standard output if `capture`."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=ROOT,
        check=True,
        capture_output=capture,
        text=True,
    )
    return result.stdout if capture else ""


def run_rows() -> list[dict]:
    """Every row through DVC's queue, one at a time (the workspace and its params.yaml stay as
    they are), as experiments named `table-<row>` tracked in a scratch MLflow store (the
    workspace's champion stays as it is); their test metrics as `dvc exp show` reports them,
    and their training seconds as the train stage recorded them in MLflow."""
    if "Queued" in dvc("queue", "status", capture=True):
        raise RuntimeError("DVC's queue holds experiments already: run or remove them first")
    scratch = tempfile.mkdtemp(prefix="experiments-table-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch}/mlflow.db"
    for name, model, optimizer, learning_rate, momentum in ROWS:
        subprocess.run(
            [sys.executable, "-m", "dvc", "exp", "remove", f"{PREFIX}{name}"],
            cwd=ROOT,
            capture_output=True,
        )
        # --force: every row trains (and is timed), none is restored from DVC's run-cache.
        dvc(
            *("exp", "run", "--queue", "--force", "-n", f"{PREFIX}{name}"),
            *("-S", f"train.optimizer={optimizer}", "-S", f"train.learning_rate={learning_rate}"),
            *("-S", f"train.momentum={momentum or 0.0}", "-S", f"model.type={model}"),
        )
    dvc("queue", "start", "-j", "1")
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        status = dvc("queue", "status", capture=True)
        if "Queued" not in status and "Running" not in status:
            break
        if time.monotonic() > deadline:
            dvc("queue", "kill", *(f"{PREFIX}{row[0]}" for row in ROWS))
            raise RuntimeError(f"the sweep took over {TIMEOUT_S / 60:.0f} minutes:\n{status}")
        time.sleep(5)
    found = {}
    for baseline in json.loads(dvc("exp", "show", "--json", capture=True)):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision.get("data") or {}
                metrics = data.get("metrics", {}).get("reports/metrics.json", {}).get("data")
                if revision.get("name") and metrics:
                    found[revision["name"].removeprefix(PREFIX)] = metrics
    missing = [row[0] for row in ROWS if row[0] not in found]
    if missing:
        raise RuntimeError(f"experiments {missing} failed: see dvc queue logs NAME\n{status}")
    seconds = fit_seconds(os.environ["MLFLOW_TRACKING_URI"])
    untimed = [row[0] for row in ROWS if row[0] not in seconds]
    if untimed:
        raise RuntimeError(f"experiments {untimed} left no MLflow run with training seconds")
    return [
        {
            "name": name,
            "model": model,
            "optimizer": optimizer,
            "learning_rate": learning_rate,
            "momentum": momentum,
            "test_accuracy": found[name]["test_accuracy"],
            "test_loss": found[name]["test_loss"],
            "train_seconds": seconds[name],
        }
        for name, model, optimizer, learning_rate, momentum in ROWS
    ]


def fit_seconds(uri: str) -> dict[str, float]:
    """Each row's training seconds (20 epochs), from its run in the scratch MLflow store."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    runs = client.search_runs(
        experiments,
        "tags.`dvc.exp_name` LIKE 'table-%' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],  # a row run twice: its latest run counts
    )
    return {
        run.data.tags["dvc.exp_name"].removeprefix(PREFIX): float(
            run.data.tags["mlpipe.fit_seconds"]
        )
        for run in runs
        if "mlpipe.fit_seconds" in run.data.tags
    }


def table(results: dict) -> str:
    """The README's Markdown table, the best test accuracy in bold."""
    rows = results["rows"]
    best = max(row["test_accuracy"] for row in rows)
    lines = [
        "| model | optimizer | learning rate | momentum | test accuracy | test loss | training |",
        "|-------|-----------|---------------|----------|---------------|-----------|----------|",
    ]
    for row in rows:
        optimizer = row["optimizer"] + (" (the tutorial)" if row["name"] == "tutorial" else "")
        # An en dash where the optimizer takes no momentum.
        momentum = "\u2013" if row["momentum"] is None else f"{row['momentum']:g}"
        accuracy = f"{row['test_accuracy']:.4f}"
        if row["test_accuracy"] == best:
            accuracy = f"**{accuracy}**"
        lines.append(
            f"| {row['model']} | {optimizer} | {row['learning_rate']:g} | {momentum} | {accuracy} "
            f"| {row['test_loss']:.4f} | {row['train_seconds']:.0f} s |"
        )
    lines.append("")
    lines.append(
        f"Measured by `scripts/experiments_table.py` on {results['machine']}; training is the "
        "train stage's 20 epochs (`mlpipe.fit_seconds` in MLflow)."
    )
    return "\n".join(lines)


def rewrite_readme(results: dict, readme: Path = README) -> None:
    """Replace what lies between the README's table markers, and nothing else."""
    text = readme.read_text(encoding="utf-8")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    write_text(readme, f"{before}{START}\n{table(results)}\n{END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--render", action="store_true", help="rewrite the README only")
    args = parser.parse_args()
    if not args.render:
        machine = f"{os.cpu_count()}-core {platform.machine()} CPU, {platform.system()}"
        rows = run_rows()
        write_text(RESULTS, json_text({"machine": machine, "rows": rows}))
    rewrite_readme(json.loads(RESULTS.read_text()))
    print(f"{README.name}: experiments table rewritten from {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
