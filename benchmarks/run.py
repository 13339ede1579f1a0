"""Benchmark: the pipeline against the bare tutorial doing the same work.

Run by hand from the repository root, with a folder holding mnist.npz (about 15 minutes on
2 cores):

    DATA_MIRROR=/path/to/mirror .venv/bin/python benchmarks/run.py [--rounds 3]

It works in a fresh clone of the repository's committed state under benchmarks/work/ and
writes benchmarks/results.csv (one row per measurement) and benchmarks/RESULTS.md (a summary
with the machine, the versions and the targets). Everything is measured from outside the
pipeline: wall times and peak memory of each process, `-X importtime`, DVC's output, and what
the train stage records in MLflow (fit and tracking seconds) and in reports/history.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "benchmarks"
sys.path.insert(0, str(REPO))
from tests.fakes import set_params  # noqa: E402  (params.yaml edited as the tests edit it)

STAGES = ("download", "preprocess", "train", "evaluate", "plot")
OUTPUT_FOLDERS = ("data/raw", "data/processed", "models", "reports")


@dataclass
class Row:
    measure: str
    value: float
    unit: str
    target: str = ""
    met: str = ""


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra)
    return env


@dataclass
class Finished:
    stdout: str
    stderr: str
    peak_rss_mb: float  # of the process itself, from the kernel's accounting
    arrivals: list[tuple[float, str]]  # (seconds since the start, line) of standard error

    def arrival(self, pattern: str) -> tuple[float, re.Match[str]]:
        """When the first standard-error line matching `pattern` arrived, and its match."""
        for seconds, line in self.arrivals:
            found = re.search(pattern, line)
            if found:
                return seconds, found
        raise SystemExit(f"no line matching {pattern!r} in:\n{self.stderr[-3000:]}")


def timed(command: list[str], cwd: Path, **extra: str) -> tuple[float, Finished]:
    """Run `command`; its wall time, output, peak memory (children of a child not counted) and
    when each line of its standard error arrived."""
    arrivals: list[tuple[float, str]] = []
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=environment(**extra),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )

        def read() -> None:
            for line in process.stderr:
                arrivals.append((time.perf_counter() - started, line))

        reader = threading.Thread(target=read)
        reader.start()
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        reader.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stderr = "".join(line for _, line in arrivals)
        finished = Finished(out.read(), stderr, usage.ru_maxrss / 1024, arrivals)
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} failed:\n{finished.stdout[-2000:]}\n{finished.stderr[-3000:]}"
        )
    return elapsed, finished


def fresh_clone(destination: Path) -> Path:
    """A clone of the repository's committed state, as a user would start from."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(destination)], check=True)
    return destination


def clean(repo: Path) -> None:
    """No outputs, no DVC cache or lock, an empty tracking store: the state of a fresh clone."""
    for folder in OUTPUT_FOLDERS:
        for path in (repo / folder).glob("*"):
            if path.name != ".gitignore":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm", "mlflow.db.lock", "dvc.lock"):
        (repo / name).unlink(missing_ok=True)
    for folder in ("mlartifacts", ".dvc/cache", ".dvc/tmp"):
        shutil.rmtree(repo / folder, ignore_errors=True)


def dvc_repro(repo: Path, **extra: str) -> tuple[float, list[str]]:
    elapsed, result = timed([sys.executable, "-m", "dvc", "repro"], repo, **extra)
    ran = [
        line.split("'")[1]
        for line in result.stdout.splitlines()
        if line.startswith("Running stage '")
    ]
    return elapsed, ran


def baseline(mirror: Path) -> tuple[float, dict]:
    """The bare script's wall time and report, with when its first epoch began (its probe)."""
    elapsed, result = timed(
        [sys.executable, str(HERE / "baseline.py"), str(mirror / "mnist.npz")], REPO
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["first_epoch_s"], _ = result.arrival("^first epoch begins")
    return elapsed, report


def first_epoch_begins(result: Finished) -> float:
    """When the train stage's first epoch began: its log line's arrival less its duration."""
    arrived, found = result.arrival(r"epoch 1/\d+ .*\((\d+\.\d+) s\)")
    return arrived - float(found.group(1))


def fit_seconds(repo: Path) -> float:
    """The fit time the train stage of the last run recorded in MLflow."""
    return training_record(repo)["fit_s"]


def predict_seconds(repo: Path, *args: str, rounds: int = 3) -> float:
    """Median wall time of `python -m mlpipe.predict` on one test image, in a fresh process."""
    import numpy as np
    from PIL import Image

    image = repo / "benchmarks-digit.png"
    with np.load(repo / "data/processed/test.npz") as test:
        Image.fromarray(test["x"][0]).save(image)
    times = [
        timed([sys.executable, "-m", "mlpipe.predict", str(image), *args], repo)[0]
        for _ in range(rounds)
    ]
    image.unlink()
    return statistics.median(times)


def import_seconds(stderr: str) -> float:
    """Total of the top-level cumulative times that `-X importtime` reports."""
    total_us = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if not name.startswith("  ") and cumulative.strip().isdigit():
                total_us += int(cumulative)
    return total_us / 1e6


def per_stage(repo: Path, mirror: Path) -> list[dict]:
    """Each stage run on its own, in order: wall time, imports, peak memory (and for train,
    when its first epoch began)."""
    rows = []
    for stage in STAGES:
        elapsed, result = timed(
            [sys.executable, "-m", f"stages.{stage}"],
            repo,
            PYTHONPATH=str(repo),
            PYTHONPROFILEIMPORTTIME="1",
            DATA_MIRROR=str(mirror),
        )
        imports = import_seconds(result.stderr)
        heavy = [m for m in ("tensorflow", "keras") if f"| {m}\n" in result.stderr + "\n"]
        rows.append(
            {
                "stage": stage,
                "wall_s": elapsed,
                "imports_s": imports,
                "rest_s": max(elapsed - imports, 0.0),
                "peak_rss_mb": result.peak_rss_mb,
                "imports_tensorflow": bool(heavy),
            }
        )
        if stage == "train":
            rows[-1]["first_epoch_s"] = first_epoch_begins(result)
    return rows


def training_record(repo: Path) -> dict:
    """What the train stage recorded: fit and tracking seconds (MLflow tags), epochs, samples."""
    import numpy as np

    # In a process of its own: MLflow keeps a store's connections open per URI, and each round
    # deletes mlflow.db and starts a new one at the same path.
    read_tags = (
        "import json, sys; from mlflow import MlflowClient; "
        "client = MlflowClient(tracking_uri=sys.argv[1]); "
        "print(json.dumps(client.get_run(sys.argv[2]).data.tags))"
    )
    run_id = json.loads((repo / "models/run.json").read_text())["run_id"]
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    _, result = timed([sys.executable, "-c", read_tags, uri, run_id], repo)
    tags = json.loads(result.stdout)
    epochs = len((repo / "reports/history.csv").read_text().strip().splitlines()) - 1
    with np.load(repo / "data/processed/train.npz") as train:
        samples = len(train["y"])
    return {
        "fit_s": float(tags["mlpipe.fit_seconds"]),
        "tracking_s": float(tags["mlpipe.tracking_seconds"]),
        "epochs": epochs,
        "samples_trained": samples * epochs,
    }


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="baseline / dvc repro alternations")
    args = parser.parse_args()
    mirror = Path(os.environ.get("DATA_MIRROR", REPO.parent / "shared" / "data")).resolve()
    if not (mirror / "mnist.npz").is_file():
        raise SystemExit(f"no mnist.npz in {mirror}; set DATA_MIRROR")
    work = HERE / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    repo = fresh_clone(work / "clone")
    rows: list[Row] = []
    started = time.perf_counter()

    # Baseline and end to end, alternated: these machines are noisy.
    base_times, repro_times, base_reports, overheads = [], [], [], []
    for round_number in range(args.rounds):
        elapsed, report = baseline(mirror)
        base_times.append(elapsed)
        base_reports.append(report)
        clean(repo)
        elapsed, ran = dvc_repro(repo, DATA_MIRROR=str(mirror))
        assert ran == list(STAGES), ran
        repro_times.append(elapsed)
        overheads.append(elapsed - fit_seconds(repo))
        print(
            f"round {round_number + 1}: baseline {base_times[-1]:.1f} s, dvc repro {elapsed:.1f} s",
            flush=True,
        )
    base_median, repro_median = statistics.median(base_times), statistics.median(repro_times)
    ratio = repro_median / base_median
    rows += [
        Row("baseline (bare tutorial script), median", base_median, "s"),
        Row("dvc repro from a clean state, median", repro_median, "s"),
        Row("end-to-end ratio to baseline", ratio, "x", "<= 1.25", str(ratio <= 1.25)),
        Row("baseline test accuracy", base_reports[0]["test_accuracy"], ""),
        Row("baseline fit, median", statistics.median(r["fit_s"] for r in base_reports), "s"),
    ]
    overhead = statistics.median(overheads)
    rows.append(
        Row("overhead: dvc repro less its fit, median", overhead, "s", "< 8", str(overhead < 8))
    )

    # Per stage.
    stages = per_stage(repo, mirror)
    for stage in stages:
        name = stage["stage"]
        rows += [
            Row(f"{name}: wall time", stage["wall_s"], "s"),
            Row(f"{name}: imports", stage["imports_s"], "s"),
            Row(f"{name}: everything after the imports", stage["rest_s"], "s"),
            Row(
                f"{name}: peak memory",
                stage["peak_rss_mb"],
                "MB",
                "< 2048",
                str(stage["peak_rss_mb"] < 2048),
            ),
        ]
        if name in ("download", "preprocess", "plot"):
            rows.append(
                Row(
                    f"{name}: imports TensorFlow",
                    float(stage["imports_tensorflow"]),
                    "bool",
                    "0",
                    str(not stage["imports_tensorflow"]),
                )
            )
    for name in ("evaluate", "plot"):
        wall = next(s["wall_s"] for s in stages if s["stage"] == name)
        rows.append(Row(f"{name}: wall time against its target", wall, "s", "< 3", str(wall < 3)))
    train = next(s for s in stages if s["stage"] == "train")
    bare = statistics.median(r["first_epoch_s"] for r in base_reports)
    extra = train["first_epoch_s"] - bare
    rows += [
        Row("baseline: its first epoch begins (import, load, build), median", bare, "s"),
        Row("train: its first epoch begins", train["first_epoch_s"], "s"),
        Row(
            "train: before its first epoch, more than the baseline",
            extra,
            "s",
            "< 1",
            str(extra < 1),
        ),
    ]
    record = training_record(repo)
    calls = record["tracking_s"] / train["wall_s"]
    around = train["rest_s"] - record["fit_s"]
    rows += [
        Row(
            "train: MLflow calls of the run, share of the stage",
            100 * calls,
            "%",
            "< 2",
            str(calls < 0.02),
        ),
        Row("train: after imports, outside the fit (store, data, saving, logging)", around, "s"),
    ]
    ours = record["samples_trained"] / record["fit_s"]
    theirs = statistics.median(r["samples_trained"] / r["fit_s"] for r in base_reports)
    rows += [
        Row("training throughput, train stage", ours, "samples/s"),
        Row("training throughput, baseline model.fit", theirs, "samples/s"),
        Row("throughput ratio", ours / theirs, "x", ">= 0.95", str(ours / theirs >= 0.95)),
        Row("MLflow calls per epoch", 1000 * record["tracking_s"] / record["epochs"], "ms"),
    ]

    # Predict, one image, in a fresh process: the champion from the registry, and a file.
    champion = predict_seconds(repo)
    rows += [
        Row(
            "predict one image (the champion, from MLflow)", champion, "s", "< 5", str(champion < 5)
        ),
        Row(
            "predict one image (models/model.keras)",
            predict_seconds(repo, "--model", "models/model.keras"),
            "s",
        ),
    ]

    # Incremental.
    noop = statistics.median(dvc_repro(repo)[0] for _ in range(3))
    rows.append(Row("no-op dvc repro", noop, "s", "<= 0.7", str(noop <= 0.7)))
    set_params(repo, plot__wrong_count=9)
    elapsed, ran = dvc_repro(repo)
    rows.append(
        Row(
            f"plot-only change (reran {'+'.join(ran)})",
            elapsed,
            "s",
            "<= 5, plot only",
            str(elapsed <= 5 and ran == ["plot"]),
        )
    )
    set_params(repo, train__epochs=21)
    elapsed, ran = dvc_repro(repo)
    rows.append(Row(f"train.epochs change (reran {'+'.join(ran)})", elapsed, "s"))
    set_params(repo, train__epochs=20, plot__wrong_count=16)

    # Growth with the size of the training set.
    sizes = []
    for fraction in (0.1, 0.3, 1.0):
        set_params(repo, preprocess__train_fraction=fraction)
        clean(repo)
        elapsed, _ = dvc_repro(repo, DATA_MIRROR=str(mirror))
        sizes.append((fraction, elapsed))
        rows.append(Row(f"dvc repro, train_fraction {fraction}", elapsed, "s"))
    slope, intercept = _line(sizes)
    rows += [
        Row("growth: seconds per 100% of the training set", slope, "s"),
        Row("growth: fixed overhead (intercept)", intercept, "s"),
    ]
    set_params(repo, preprocess__train_fraction=1.0)
    write(rows, stages, time.perf_counter() - started)


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def write(rows: list[Row], stages: list[dict], seconds: float) -> None:
    with open(HERE / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["measure", "value", "unit", "target", "met"])
        for row in rows:
            writer.writerow([row.measure, f"{row.value:.4g}", row.unit, row.target, row.met])
    versions = ", ".join(
        f"{name} {version(name)}" for name in ("tensorflow", "keras", "dvc", "mlflow", "numpy")
    )
    lines = [
        "# Benchmark results",
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        f"- Versions: {versions}",
        f"- Date: {time.strftime('%Y-%m-%d')}; the benchmark took {seconds / 60:.1f} minutes",
        "",
        "| measure | value | unit | target | met |",
        "|---|---|---|---|---|",
        *(f"| {r.measure} | {r.value:.4g} | {r.unit} | {r.target} | {r.met} |" for r in rows),
        "",
        "## Per stage",
        "",
        "| stage | wall s | imports s | after imports s | peak MB |",
        "|---|---|---|---|---|",
        *(
            f"| {s['stage']} | {s['wall_s']:.2f} | {s['imports_s']:.2f} | {s['rest_s']:.2f} "
            f"| {s['peak_rss_mb']:.0f} |"
            for s in stages
        ),
        "",
        "plot's imports include its second process's (MLflow's, beside the drawing: "
        "mlpipe.tracking.mlflow_process), so they can exceed its wall time; its peak memory is its "
        "own.",
        "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
