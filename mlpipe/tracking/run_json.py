"""`models/run.json`: the train stage's record of its MLflow run, for evaluate and plot.

One typed model writes and reads it, so the stages cannot disagree on a key or a type.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlpipe.atomic import json_text
from mlpipe.errors import DataError


class RunRecord(BaseModel):
    """Which MLflow run trained `models/model.keras`, and which registry version it became."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    run_id: str = Field(min_length=1)
    experiment_id: str = Field(min_length=1)
    experiment_name: str = Field(min_length=1)
    model_uri: str = Field(min_length=1)
    registered_model_name: str = Field(min_length=1)
    registered_model_version: int = Field(ge=1)
    registered_model_uri: str = Field(min_length=1)
    dataset: str = Field(min_length=1)
    data_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def version_label(self) -> str:
        """`keras-tutorial-mnist version 3`: the registered version, as log lines name it."""
        return f"{self.registered_model_name} version {self.registered_model_version}"

    def text(self) -> str:
        return json_text(self.model_dump())

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        """The record in `path`, checked; DataError naming the file and the fix otherwise."""
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(found, dict) or not set(found) & set(cls.model_fields):
                kind = "JSON object" if isinstance(found, dict) else f"JSON {type(found).__name__}"
                raise DataError(
                    f"{path}: a {kind} without any key of the pipeline's run record (run_id, "
                    "registered_model_name, ...): another program's file, left as it is; move "
                    "it away, then run the train stage"
                )
            return cls.model_validate(found)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: missing; run the train stage first") from exc
        except (OSError, ValueError) as exc:
            reason = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
            raise DataError(f"{path}: unreadable ({reason}); run the train stage again") from exc


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "the record"
    return f"{key}: {error['msg']}"
