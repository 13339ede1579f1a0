"""What a stage records on its MLflow run, each call timed and its failure made one line."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipe.errors import TrackingError
from mlpipe.tracking.failures import tracking_failure

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput

log = logging.getLogger(__name__)


@dataclass
class Tracker:
    """An MLflow run, with the time spent in MLflow calls counted (`record_timings` logs it)."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    seconds: float = 0.0
    calls: int = 0
    _pending: Any = None  # the last batch queued for the background writer

    @contextmanager
    def timed(self) -> Iterator[None]:
        """Count the time of the MLflow calls inside; turn their failures into one line."""
        from mlflow.exceptions import MlflowException
        from requests import RequestException
        from sqlalchemy.exc import SQLAlchemyError

        start = time.perf_counter()
        try:
            yield
        # RequestException: an artifact upload refused or cut off by a server.
        except (MlflowException, SQLAlchemyError, RequestException) as exc:
            raise TrackingError(tracking_failure(exc, self.client.tracking_uri)) from exc
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        with self.timed():
            self.client.log_batch(
                self.run_id, params=[Param(key, str(value)) for key, value in params.items()]
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with self.timed():
            self.client.log_batch(self.run_id, metrics=_metrics(metrics, step))

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Queue an epoch's metrics for MLflow's background writer: training never waits on it.

        The previous batch must have landed by now (an epoch has passed): waiting for it here
        costs nothing, and a store that went away is reported one epoch late, not at the end.
        """
        with self.timed():
            self._wait()
            self._pending = self.client.log_batch(
                self.run_id, metrics=_metrics(metrics, epoch), synchronous=False
            )

    def flush(self) -> None:
        """Wait until every queued batch is written; raise if one failed."""
        with self.timed():
            self._wait()

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()

    def log_artifacts(self, folder: Path, under: str) -> None:
        with self.timed():
            self.client.log_artifacts(self.run_id, str(folder), under)

    def log_inputs(self, datasets: list[DatasetInput]) -> None:
        with self.timed():
            self.client.log_inputs(self.run_id, datasets=datasets)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        with self.timed():
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_text(self, text: str, name: str) -> None:
        with self.timed():
            self.client.log_text(self.run_id, text, name)

    def record_timings(self, epochs: int, fit_seconds: float) -> None:
        """Log how long training and the MLflow calls took, and keep both as tags (the
        metrics are what the model scored)."""
        log.info(
            "trained %d epochs in %.1f s; %d MLflow calls took %.2f s (%.1f%% of training)",
            epochs,
            fit_seconds,
            self.calls,
            self.seconds,
            100 * self.seconds / max(fit_seconds, 1e-9),
        )
        self.set_tags(
            {
                "mlpipe.fit_seconds": f"{fit_seconds:.2f}",
                "mlpipe.tracking_seconds": f"{self.seconds:.2f}",
            }
        )


def _metrics(metrics: Mapping[str, float], step: int | None) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
