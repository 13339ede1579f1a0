"""Outputs that appear complete or not at all.

Each writer fills a sibling temporary path that keeps the real suffix (Keras and NumPy look at
it), flushes it to disk, then renames it over the final name with `os.replace`. A crash, a
signal or a full disk leaves at worst a hidden temp file, which is removed on the way out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temp_sibling(final: Path, pid: int | None = None) -> Path:
    """A hidden path beside `final`, unique to this process, with the same suffix."""
    return final.with_name(f".{final.stem}.tmp{pid or os.getpid()}{final.suffix}")


def remove_stale_temps(final: Path) -> None:
    """Remove temp siblings of `final` left by processes that were killed (`kill -9`), with
    any side files named after them (a half-made SQLite store's `-journal` or `-wal`)."""
    import psutil

    prefix = f".{final.stem}.tmp"
    # `*` twice in a row is not a valid glob pattern: a name without a suffix needs only one.
    pattern = f"{prefix}*{final.suffix}*" if final.suffix else f"{prefix}*"
    for temp in final.parent.glob(pattern):
        owner = temp.name[len(prefix) :].split(".", 1)[0]
        if owner.isdigit() and int(owner) != os.getpid() and not psutil.pid_exists(int(owner)):
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_paths(*finals: Path) -> Iterator[list[Path]]:
    """Temp paths for several outputs, renamed into place together only if all were written.

    A run that fails leaves the previous run's outputs as they were, all of them: DVC, which
    records nothing for a failed stage, still finds the outputs its lock file describes.
    """
    temps = [temp_sibling(final) for final in finals]
    for final in finals:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
    try:
        yield temps
        for temp in temps:
            with open(temp, "rb") as handle:
                os.fsync(handle.fileno())
        for temp, final in zip(temps, finals, strict=True):
            os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `final`, on failure it is removed."""
    with atomic_paths(final) as (temp,):
        yield temp


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def json_text(data: Any) -> str:
    """JSON with sorted keys, two-space indent and a trailing newline, so diffs stay stable."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"
