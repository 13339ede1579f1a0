"""Check that the committed dvc.lock is true to the code, params and commands of this checkout.

    python scripts/check_lock.py      (CI runs it on a fresh clone, before anything else)

A fresh clone has no data, models or reports: outputs that are missing, and stage inputs that
an earlier stage produces, are fine. What is not fine is a stage whose code, params or command
differ from what dvc.lock recorded: its committed results (and `dvc exp show`'s baseline) would
not be what this code produces. The pinned libraries are in it too: requirements.lock is a
dep of every stage whose outputs they compute. A frozen stage is never checked by DVC, so it
is refused here (a lock that cannot be checked is not known to be true). Exit 1 with one line
per such difference; 0 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MISSING = ("deleted", "not in cache")


def produced_paths(pipeline: dict) -> set[str]:
    """Every path a stage of dvc.yaml writes (outs, metrics, plots)."""
    paths = set()
    for stage in pipeline.get("stages", {}).values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def problems(status: dict, produced: set[str]) -> list[str]:
    """What `dvc status --json` reports beyond outputs that are not here yet."""
    found = []
    for stage, changes in status.items():
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                found.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                for path, state in paths.items():
                    if isinstance(state, dict):  # params: {"train": "modified"}
                        keys = ", ".join(f"{key} {how}" for key, how in state.items())
                        found.append(f"{stage}: params in {path}: {keys}")
                    elif not _not_here_yet(kind, path, state, produced):
                        found.append(f"{stage}: {kind.removeprefix('changed ')} {path} {state}")
    return found


def _not_here_yet(kind: str, path: str, state: str, produced: set[str]) -> bool:
    """An output not made yet, or an input that an earlier stage makes."""
    if state not in MISSING:
        return False
    return kind == "changed outs" or (kind == "changed deps" and path in produced)


def frozen_stages(pipeline: dict) -> list[str]:
    """Stages marked `frozen: true`: `dvc status` skips them."""
    return [name for name, stage in pipeline.get("stages", {}).items() if stage.get("frozen")]


def main() -> int:
    import importlib.util

    missing = [name for name in ("yaml", "dvc") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {sys.executable} is not the project's environment (it has no "
            f"{' and no '.join(missing)}): "
            "run `make check-lock`, or .venv/bin/python scripts/check_lock.py after `make setup`",
            file=sys.stderr,
        )
        return 1
    import yaml

    result = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        print(f"error: dvc status failed: {reason}", file=sys.stderr)
        return 1
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    found = problems(json.loads(result.stdout or "{}"), produced_paths(pipeline))
    for problem in found:
        print(f"error: dvc.lock is stale: {problem}", file=sys.stderr)
    if found:
        print(
            "error: run the pipeline (make pipeline) and commit dvc.lock with the change",
            file=sys.stderr,
        )
    frozen = frozen_stages(pipeline)
    for name in frozen:
        print(
            f"error: dvc.lock cannot be checked for stage {name}: it is frozen, and DVC checks "
            f"nothing of a frozen stage; `dvc unfreeze {name}`, then run this again",
            file=sys.stderr,
        )
    if found or frozen:
        return 1
    print("dvc.lock matches the code, params, pinned libraries and commands of every stage")
    return 0


if __name__ == "__main__":
    sys.exit(main())
