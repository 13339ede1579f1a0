"""Where a stage's time goes, for the benchmark: bookkeeping versus real work, peak memory.

Bookkeeping is what the pipeline adds to the tutorial's own work: MLflow calls, hashing data,
checking and creating the tracking store. When `MLPIPE_TIMINGS_DIR` is set, each stage writes
`<stage>.json` there on exit; otherwise this costs a few counters.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_ENV = "MLPIPE_TIMINGS_DIR"
_totals: dict[str, float] = {"bookkeeping_s": 0.0}


@contextmanager
def bookkeeping() -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        _totals["bookkeeping_s"] += time.perf_counter() - start


def record(key: str, value: float) -> None:
    _totals[key] = _totals.get(key, 0.0) + value


def write_report(stage: str) -> None:
    folder = os.environ.get(TIMINGS_ENV)
    if not folder:
        return
    import psutil

    started = psutil.Process().create_time()
    report = {
        "stage": stage,
        "wall_s": time.time() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **_totals,
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{stage}.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
