"""`sweep.yaml`: the search a user describes, typed, and checked against params.yaml's own rules
before any trial runs.

Every error is one line naming the key, the value and what is allowed: an unknown key, an
empty space, low above high, a log range that reaches 0, empty choices, a key that params.yaml
does not have, a value params.yaml's own constraints refuse (checked by the same model the
stages use), an objective that is not a validation metric train logs per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipe.config import describe, parse_params, parse_yaml, show_value
from mlpipe.errors import ConfigError

SOURCE = "sweep.yaml"
# The validation metrics train logs each epoch: what a sweep may rank and prune on.
METRICS = ("val_loss", "val_accuracy")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "successive_halving", "none")
# The pruners that stop trials in rungs of epochs: they need the epochs of a whole trial.
RUNG_PRUNERS = ("hyperband", "successive_halving")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Objective(_Strict):
    metric: Literal[METRICS]
    direction: Literal["minimize", "maximize"]


class Sampler(_Strict):
    name: Literal[SAMPLERS] = "tpe"
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)


class Pruner(_Strict):
    name: Literal[PRUNERS] = "median"
    warmup_epochs: int = Field(default=0, ge=0, description="epochs before any pruning")
    startup_trials: int = Field(default=5, ge=0, description="trials run whole before pruning")
    max_epochs: int | None = Field(
        default=None,
        gt=0,
        description="a whole trial's epochs; from set or params.yaml if not given",
    )

    @model_validator(mode="after")
    def _only_its_own_keys(self) -> Pruner:
        """A key the named pruner does not read is refused, not silently ignored."""
        given = self.model_fields_set
        if "max_epochs" in given and self.name not in RUNG_PRUNERS:
            raise ValueError(f"max_epochs is for {' and '.join(RUNG_PRUNERS)}, not {self.name}")
        if "startup_trials" in given and self.name != "median":
            raise ValueError(f"startup_trials is for median, not {self.name}")
        return self


Number = int | float


class Dimension(_Strict):
    """One key of the space: a range (`low`, `high`, maybe `log` or `step`) or `choices`; with
    `when`, only for trials whose other keys take the given values."""

    low: Number | None = None
    high: Number | None = None
    log: bool = False
    step: Number | None = Field(default=None, gt=0)
    choices: list[Any] | None = Field(default=None, min_length=1)
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _a_range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if (self.low, self.high, self.step) != (None, None, None) or self.log:
                raise ValueError("takes either choices or a range (low, high), not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (a range) or choices")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low above 0 (got {self.low})")
        if self.log and self.step is not None:
            raise ValueError("takes log or step, not both")
        return self

    @property
    def integers(self) -> bool:
        """Whether the range is of integers (both ends and the step written as integers)."""
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return all(isinstance(value, int) and not isinstance(value, bool) for value in ends)

    def candidates(self) -> list[Any]:
        """The values checked against params.yaml's rules: the choices, or both ends."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class SweepSpec(_Strict):
    study: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*$", description="a name")
    objective: Objective
    trials: int = Field(gt=0, le=100_000)
    sampler: Sampler = Sampler()
    pruner: Pruner = Pruner()
    set: dict[str, Any] = Field(default_factory=dict, description="params fixed for every trial")
    space: dict[str, Dimension] = Field(min_length=1)

    def canonical_space(self) -> str:
        """The space, the fixed params and the metric as one JSON text: a study that began
        with others refuses to go on (its trials would not compare)."""
        space = {key: value.model_dump() for key, value in self.space.items()}
        search = {"space": space, "set": self.set, "metric": self.objective.metric}
        return json.dumps(search, sort_keys=True)


def load_spec(path: Path, params_raw: dict[str, Any]) -> SweepSpec:
    """The sweep in `path`, checked, against `params_raw` (params.yaml as parsed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found; write one (README: Sweeps)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from exc
    raw = parse_yaml(text, SOURCE)
    if not isinstance(raw, dict):
        raise ConfigError(f"{SOURCE}: must be a mapping of keys (got {show_value(raw)})")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from exc
    check_against_params(spec, params_raw)
    # A whole trial's epochs, known unless the space varies them: Optuna's "auto" waits for
    # the first trial to end, and prunes none before.
    epochs = spec.pruner.max_epochs
    if "train.epochs" not in spec.space and epochs is None:
        epochs = spec.set.get("train.epochs", params_raw.get("train", {}).get("epochs"))
        if spec.pruner.name in RUNG_PRUNERS:
            pruner = spec.pruner.model_copy(update={"max_epochs": epochs})
            spec = spec.model_copy(update={"pruner": pruner})
    warmup = spec.pruner.warmup_epochs
    if spec.pruner.name != "none" and isinstance(epochs, int) and warmup >= epochs:
        raise ConfigError(
            f"{SOURCE}: pruner.warmup_epochs {warmup} leaves none of a trial's {epochs} epochs "
            "to prune at; make it smaller, or use pruner none"
        )
    return spec


def _describe(error: dict[str, Any]) -> str:
    """params.yaml's one-line errors, with the key named for a range's own checks too."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "value_error" and key:
        return f"{SOURCE}: {key}: {error['ctx']['error']}"
    if error["type"] == "too_short":
        return f"{SOURCE}: {key} is empty; give it at least one entry"
    return describe(error, SOURCE, SweepSpec)


def check_against_params(spec: SweepSpec, params_raw: dict[str, Any]) -> None:
    """Every key names a param; every value a trial may take passes params.yaml's own rules."""
    for group, keys in (("set", spec.set), ("space", spec.space)):
        for key in keys:
            _require_param(f"{group}.{key}", key, params_raw)
    both = sorted(set(spec.set) & set(spec.space))
    if both:
        raise ConfigError(f"{SOURCE}: {both[0]} is in both set and space; keep it in one")
    base = with_values(params_raw, spec.set)
    _check(base, "set", spec.set)
    for key, dimension in spec.space.items():
        when = dimension.when or {}
        for other, value in when.items():
            condition = spec.space.get(other)
            if condition is None or condition.choices is None:
                raise ConfigError(
                    f"{SOURCE}: space.{key}.when names {other}, which is not a key of the space "
                    "with choices"
                )
            if value not in condition.choices:
                raise ConfigError(
                    f"{SOURCE}: space.{key}.when: {other} {show_value(value)} is not one of its "
                    f"choices {show_value(condition.choices)}"
                )
        for value in dimension.candidates():
            _check(with_values(base, when), f"space.{key}", {key: value})


def _require_param(shown: str, key: str, params_raw: dict[str, Any]) -> None:
    section, _, leaf = key.partition(".")
    if not leaf or not isinstance(params_raw.get(section), dict) or leaf not in params_raw[section]:
        raise ConfigError(
            f"{SOURCE}: {shown} is not a key of params.yaml (keys are section.name, e.g. "
            "train.learning_rate)"
        )


def with_values(params_raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """params.yaml as parsed, with `values` (keyed section.name) in place."""
    changed = {section: dict(keys) for section, keys in params_raw.items()}
    for key, value in values.items():
        section, _, leaf = key.partition(".")
        changed[section][leaf] = value
    return changed


def _check(base: dict[str, Any], where: str, values: dict[str, Any]) -> None:
    try:
        parse_params(with_values(base, values), "params.yaml")
    except ConfigError as exc:
        shown = ", ".join(f"{key} {show_value(value)}" for key, value in values.items())
        raise ConfigError(f"{SOURCE}: {where}: {shown} is refused: {exc}") from exc


def overrides(spec: SweepSpec, chosen: dict[str, Any]) -> dict[str, Any]:
    """The params a trial runs with, as `dvc exp run -S` sets them: `set`, then its own."""
    return {**spec.set, **chosen}
