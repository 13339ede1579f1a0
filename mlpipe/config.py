"""Typed, validated view of `params.yaml`.

The whole file is checked in one place, before any stage does work and before TensorFlow is
imported. Every error names the full key, the value given and what is allowed, for example
`params.yaml: train.epochs must be a positive integer (got -1)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipe.errors import ConfigError
from mlpipe.paths import PARAMS_FILE

DATASETS = ("mnist", "fashion_mnist", "cifar10")
OPTIMIZERS = ("sgd", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "selu")
LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
MODEL_TYPES = ("mlp", "cnn")
TRAINING_LOOPS = ("fit", "scan")


def _one_of(values: tuple[str, ...]) -> str:
    return "one of " + ", ".join(values)


class _Section(BaseModel):
    # Strict: "20" is not an integer and 1.5 is not an epoch count; unknown keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


class BaseParams(_Section):
    seed: int = Field(ge=0, le=2**32 - 1, description="an integer from 0 to 4294967295")
    dataset: Literal[DATASETS] = Field(description=_one_of(DATASETS))


class PreprocessParams(_Section):
    validation_split: float = Field(
        gt=0.0, lt=1.0, description="a fraction strictly between 0 and 1"
    )
    train_fraction: float = Field(
        gt=0.0, le=1.0, description="a fraction greater than 0 and at most 1"
    )


class ModelParams(_Section):
    type: Literal[MODEL_TYPES] = Field(description=_one_of(MODEL_TYPES))
    hidden_units: list[PositiveInt] = Field(
        min_length=1, description="a non-empty list of positive integers"
    )
    activation: Literal[ACTIVATIONS] = Field(description=_one_of(ACTIVATIONS))
    conv_filters: list[PositiveInt] = Field(
        min_length=1, description="a non-empty list of positive integers (used by cnn)"
    )
    dropout: float = Field(ge=0.0, lt=1.0, description="a fraction from 0 up to (not including) 1")


class TrainParams(_Section):
    optimizer: Literal[OPTIMIZERS] = Field(description=_one_of(OPTIMIZERS))
    learning_rate: float = Field(gt=0.0, le=10.0, description="a number greater than 0, at most 10")
    momentum: float = Field(ge=0.0, lt=1.0, description="a number from 0 up to (not including) 1")
    loss: Literal[LOSSES] = Field(description=_one_of(LOSSES))
    batch_size: int = Field(gt=0, le=1_000_000, description="a positive integer")
    epochs: int = Field(gt=0, le=100_000, description="a positive integer")
    early_stopping_patience: int = Field(
        ge=0, description="a non-negative integer (0 turns early stopping off)"
    )
    loop: Literal[TRAINING_LOOPS] = Field(description=_one_of(TRAINING_LOOPS))

    @model_validator(mode="after")
    def _momentum_needs_sgd(self) -> TrainParams:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(
                f"train.momentum applies only to train.optimizer sgd "
                f"(got momentum {self.momentum} with optimizer {self.optimizer}); set it to 0"
            )
        return self


class MlflowParams(_Section):
    experiment_name: str = Field(
        min_length=1,
        pattern=r"^[\w.\- ]+$",
        description="a non-empty name (letters, digits, . _ - space)",
    )
    registered_model_name: str = Field(
        min_length=1,
        pattern=r"^[\w.\-]+$",
        description="a non-empty name (letters, digits, . _ -); the dataset is appended to it",
    )


class EvaluateParams(_Section):
    batch_size: int = Field(gt=0, le=1_000_000, description="a positive integer")


class PlotParams(_Section):
    sample_grid: int = Field(ge=1, le=30, description="an integer from 1 to 30")
    prediction_grid: int = Field(ge=1, le=10, description="an integer from 1 to 10")
    wrong_count: int = Field(ge=1, le=100, description="an integer from 1 to 100")


class Params(_Section):
    base: BaseParams
    preprocess: PreprocessParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    evaluate: EvaluateParams
    plot: PlotParams

    @model_validator(mode="after")
    def _convolutions_fit_the_images(self) -> Params:
        if self.model.type != "cnn":
            return self
        from mlpipe.datasets import SPECS

        side = min(SPECS[self.base.dataset].image_shape[:2])
        blocks = max(side.bit_length() - 1, 0)  # each block halves the image, rounding down
        if len(self.model.conv_filters) > blocks:
            raise ValueError(
                f"model.conv_filters has {len(self.model.conv_filters)} blocks, each halving "
                f"the image; {self.base.dataset}'s {side}x{side} images allow at most {blocks} "
                f"(got {_show(self.model.conv_filters)})"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        """The registry name: one registered model per dataset, so champions never mix."""
        return f"{self.mlflow.registered_model_name}-{self.base.dataset}"


# The params each stage reads. dvc.yaml lists exactly these (a test checks it), so a change to
# a key reruns only the stages that depend on it.
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("base.dataset",),
    "preprocess": (
        "base.seed",
        "base.dataset",
        "preprocess.validation_split",
        "preprocess.train_fraction",
    ),
    "train": ("base", "model", "train", "mlflow"),
    "evaluate": ("base.dataset", "evaluate"),
    "plot": ("base.seed", "base.dataset", "plot"),
}


def _field_description(loc: tuple[Any, ...]) -> str | None:
    """The description of the field at `loc`, ignoring list indices."""
    model: type[BaseModel] | None = Params
    description = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        description = field.description
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return description


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


SHOWN_CHARS = 80  # error lines quote at most this much of a value or key


def _show(value: Any) -> str:
    try:
        text = (
            repr(value)
            if isinstance(value, str)
            else yaml.safe_dump(value, default_flow_style=True, width=1 << 20)
            .strip()
            .removesuffix("...")
            .strip()
        )
    except (yaml.YAMLError, RecursionError):
        text = repr(value)
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _describe(error: dict[str, Any], source: str) -> str:
    loc = tuple(error["loc"])
    key = _clip(".".join(str(part) for part in loc))
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc))
        return f"{source}: {key} is not a known key (allowed here: {allowed})"
    if kind == "missing":
        description = _field_description(loc)
        if description is None:
            return f"{source}: section {key} is missing"
        return f"{source}: {key} is missing; it must be {description}"
    if kind == "value_error":
        return f"{source}: {error['ctx']['error']}"
    description = _field_description(loc)
    if description is None:
        # A whole section with the wrong shape, e.g. `train: 5`.
        got = _show(error["input"])
        return f"{source}: {key} must be a mapping of keys to values (got {got})"
    return f"{source}: {key} must be {description} (got {_show(error['input'])})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate already-parsed YAML; raises ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections (got {_show(raw)})")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], source)) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the params file as DVC reads it: YAML 1.2, duplicate keys refused.

    DVC parses params.yaml with ruamel.yaml's safe loader; so does this, so `1e-3` is a number
    and `yes` a string to both, and `dvc exp show` never disagrees with the run.
    """
    source = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: not found at {path} (run stages from the repository root)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read ({exc})") from None
    return parse_params(parse_yaml(text, source), source)


def parse_yaml(text: str, source: str = "params.yaml") -> Any:
    """YAML 1.2 with ruamel.yaml's safe loader, exactly as DVC loads params files."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe").load(text)
    except YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{line}: {_clip(problem)}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{source}: nested too deeply to be a params file") from exc


def flatten(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The given keys (sections or dotted leaves) as flat `section.key` pairs, for logging."""
    dumped = params.model_dump()
    flat: dict[str, Any] = {}
    for key in keys:
        section, _, leaf = key.partition(".")
        values = {leaf: dumped[section][leaf]} if leaf else dumped[section]
        for name, value in values.items():
            flat[f"{section}.{name}"] = value
    return flat
