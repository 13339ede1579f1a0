"""Typed, validated view of `params.yaml`.

The whole file is checked in one place, before any stage does work and before TensorFlow is
imported. Every error names the full key, the value given and what is allowed, for example
`params.yaml: train.epochs must be an integer greater than 0 and at most 100000 (got -1)`,
with the allowed values derived from the constraints themselves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlpipe.data.specs import SPECS
from mlpipe.errors import ConfigError, first_line

DATASETS = tuple(SPECS)
OPTIMIZERS = ("sgd", "adam", "rmsprop")
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "selu")
LOSSES = ("categorical_crossentropy", "sparse_categorical_crossentropy")
MODEL_TYPES = ("mlp", "cnn")
TRAINING_LOOPS = ("fit", "scan")
DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
# What evaluate ranks versions on for `champion`: a validation metric, never the test set's.
PROMOTION_METRICS = ("val_accuracy", "val_loss")


def registered_model_name(prefix: str, dataset: str) -> str:
    """The registry name: one registered model per dataset, so champions never mix."""
    return f"{prefix}-{dataset}"


class _Section(BaseModel):
    # Strict: "20" is not an integer and 1.5 is not an epoch count; unknown keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PositiveInt = Annotated[int, Field(gt=0)]


class BaseParams(_Section):
    seed: int = Field(ge=0, le=2**32 - 1)
    dataset: Literal[DATASETS]


class PreprocessParams(_Section):
    validation_split: float = Field(gt=0.0, lt=1.0)
    train_fraction: float = Field(gt=0.0, le=1.0)


class ModelParams(_Section):
    type: Literal[MODEL_TYPES]
    hidden_units: list[PositiveInt] = Field(min_length=1)
    activation: Literal[ACTIVATIONS]
    conv_filters: list[PositiveInt] = Field(min_length=1, description="used by cnn")
    dropout: float = Field(ge=0.0, lt=1.0)
    cnn_dense_units: int = Field(gt=0, le=100_000, description="used by cnn")
    cnn_dropout: float = Field(ge=0.0, lt=1.0, description="used by cnn")


class TrainParams(_Section):
    optimizer: Literal[OPTIMIZERS]
    learning_rate: float = Field(gt=0.0, le=10.0)
    momentum: float = Field(ge=0.0, lt=1.0)
    loss: Literal[LOSSES]
    batch_size: int = Field(gt=0, le=1_000_000)
    epochs: int = Field(gt=0, le=100_000)
    early_stopping_patience: int = Field(ge=0, description="0 turns early stopping off")
    loop: Literal[TRAINING_LOOPS]
    distribution: Literal[DISTRIBUTIONS]

    @model_validator(mode="after")
    def _scan_is_one_process(self) -> TrainParams:
        if self.loop == "scan" and self.distribution != "none":
            raise ValueError(
                f"train.loop scan trains on one device in one process; it cannot be used with "
                f"train.distribution {self.distribution} (set train.loop fit or "
                "train.distribution none)"
            )
        return self

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
        min_length=1, pattern=r"^[\w.\- ]+$", description="letters, digits, . _ - space"
    )
    registered_model_name: str = Field(
        min_length=1,
        pattern=r"^[\w.\-]+$",
        description="letters, digits, . _ -; the dataset is appended to it",
    )


class EvaluateParams(_Section):
    batch_size: int = Field(gt=0, le=1_000_000)
    promote_by: Literal[PROMOTION_METRICS] = Field(description="on the validation split")


class PlotParams(_Section):
    sample_grid: int = Field(ge=1, le=30)
    prediction_grid: int = Field(ge=1, le=10)
    wrong_count: int = Field(ge=1, le=100)


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
        side = min(SPECS[self.base.dataset].image_shape[:2])
        blocks = max(side.bit_length() - 1, 0)  # each block halves the image, rounding down
        if len(self.model.conv_filters) > blocks:
            raise ValueError(
                f"model.conv_filters has {len(self.model.conv_filters)} blocks, each halving "
                f"the image; {self.base.dataset}'s {side}x{side} images allow at most {blocks} "
                f"(got {show_value(self.model.conv_filters)})"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        return registered_model_name(self.mlflow.registered_model_name, self.base.dataset)


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


def _step(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a field's annotation holds, and whether the next key names a mapping's entry
    (`space: dict[str, Dimension]`) rather than a field."""
    if get_origin(annotation) is dict:
        inner = get_args(annotation)[1]
        return (inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None), True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _field_description(loc: tuple[Any, ...], root: type[BaseModel] = Params) -> str | None:
    """What the field at `loc` must be, derived from its type and constraints."""
    model: type[BaseModel] | None = root
    field = None
    entry = False  # the next part of `loc` is a mapping's key
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        if entry:
            entry = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model, entry = _step(field.annotation)
    if field is None or model is not None:
        return None
    described = _describe_type(field.annotation, field.metadata)
    return f"{described} ({field.description})" if field.description else described


def _describe_type(annotation: Any, constraints: list[Any]) -> str:
    """`an integer from 1 to 30`, `one of mlp, cnn`, `a non-empty list of ...`: from the type."""
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(value) for value in get_args(annotation))
    if get_origin(annotation) is Annotated:
        inner, *extra = get_args(annotation)
        found = [m for info in extra for m in getattr(info, "metadata", [info])]
        return _describe_type(inner, [*found, *constraints])
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        size = "a non-empty list" if any(isinstance(c, MinLen) for c in constraints) else "a list"
        return f"{size} of {_plural(_describe_type(item, []))}"
    noun = {int: "an integer", float: "a number", str: "a string"}.get(annotation, "a value")
    bounds = {
        type(c).__name__: getattr(c, dataclasses.fields(c)[0].name)
        for c in constraints
        if isinstance(c, Gt | Ge | Lt | Le | MinLen)
    }
    low = ("at least", bounds["Ge"]) if "Ge" in bounds else ("greater than", bounds.get("Gt"))
    high = ("at most", bounds["Le"]) if "Le" in bounds else ("less than", bounds.get("Lt"))
    if "Ge" in bounds and "Le" in bounds:
        return f"{noun} from {_number(bounds['Ge'])} to {_number(bounds['Le'])}"
    said = [f"{word} {_number(value)}" for word, value in (low, high) if value is not None]
    if annotation is str and "MinLen" in bounds:
        noun = "a non-empty string"
    return f"{noun} " + " and ".join(said) if said else noun


def _plural(described: str) -> str:
    for singular, plural in (("an integer", "integers"), ("a number", "numbers")):
        if described.startswith(singular):
            return plural + described[len(singular) :]
    return described


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else f"{value}"


def _allowed_keys(loc: tuple[Any, ...], root: type[BaseModel] = Params) -> list[str]:
    model: type[BaseModel] | None = root
    entry = False
    for part in loc[:-1]:
        if entry or isinstance(part, int):
            entry = False
            continue
        if model is None or part not in model.model_fields:
            return []
        model, entry = _step(model.model_fields[part].annotation)
    return list(model.model_fields) if model is not None and not entry else []


SHOWN_CHARS = 80  # error lines quote at most this much of a value or key


def show_value(value: Any) -> str:
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


def describe(error: dict[str, Any], source: str, root: type[BaseModel] = Params) -> str:
    """One line for a pydantic error of `root` read from `source`: the key, the value given and
    what is allowed, derived from the field's own type and constraints."""
    loc = tuple(error["loc"])
    key = _clip(".".join(str(part) for part in loc))
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(loc, root))
        return f"{source}: {key} is not a known key (allowed here: {allowed})"
    if kind == "missing":
        description = _field_description(loc, root)
        if description is None:
            return f"{source}: section {key} is missing"
        return f"{source}: {key} is missing; it must be {description}"
    if kind == "value_error":
        return f"{source}: {error['ctx']['error']}"
    description = _field_description(loc, root)
    if description is None:
        # A whole section with the wrong shape, e.g. `train: 5`.
        got = show_value(error["input"])
        return f"{source}: {key} must be a mapping of keys to values (got {got})"
    return f"{source}: {key} must be {description} (got {show_value(error['input'])})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate already-parsed YAML; raises ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of sections (got {show_value(raw)})")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(exc.errors()[0], source)) from exc


def load_params(path: Path) -> Params:
    """Read and validate the params file as DVC reads it: YAML 1.2, duplicate keys refused.

    DVC parses params.yaml with ruamel.yaml's safe loader; so does this, so `1e-3` is a number
    and `yes` a string to both, and `dvc exp show` never disagrees with the run.
    """
    source = path.name
    if path.exists() and not path.is_file():
        raise ConfigError(f"{source}: not a regular file ({path} is a folder, pipe or device)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{source}: not found at {path} (run stages from the repository root)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read ({exc})") from exc
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
        problem = getattr(exc, "problem", None) or first_line(exc)
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
