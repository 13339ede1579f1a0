"""params.yaml validation, and its agreement with dvc.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlpipe.config import STAGE_PARAMS, Params, flatten, load_params, parse_params
from mlpipe.errors import ConfigError
from tests.conftest import REPO, error_lines, files_under, run_stage


def default_raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def with_value(key: str, value: Any) -> dict[str, Any]:
    raw = default_raw()
    section, leaf = key.split(".")
    raw[section][leaf] = value
    return raw


def without(key: str) -> dict[str, Any]:
    raw = default_raw()
    section, _, leaf = key.partition(".")
    if leaf:
        del raw[section][leaf]
    else:
        del raw[section]
    return raw


def test_defaults_are_the_tutorial() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.base.dataset == "mnist"
    assert params.model.type == "mlp"
    assert params.model.hidden_units == [784, 32]
    assert params.model.activation == "relu"
    assert params.train.optimizer == "sgd"
    assert params.train.learning_rate == 0.01
    assert params.train.momentum == 0.0
    assert params.train.batch_size == 500
    assert params.train.epochs == 20
    assert params.preprocess.validation_split == 0.1
    assert params.preprocess.train_fraction == 1.0
    assert params.registered_model_name == "keras-tutorial-mnist"


BAD = [
    (
        with_value("train.epochs", -1),
        "params.yaml: train.epochs must be an integer greater than 0 and at most 100000 (got -1)",
    ),
    (
        with_value("train.epochs", 0),
        "train.epochs must be an integer greater than 0 and at most 100000 (got 0)",
    ),
    (
        with_value("train.epochs", "20"),
        "train.epochs must be an integer greater than 0 and at most 100000 (got '20')",
    ),
    (
        with_value("train.epochs", 2.5),
        "train.epochs must be an integer greater than 0 and at most 100000 (got 2.5)",
    ),
    (
        with_value("train.epochs", True),
        "train.epochs must be an integer greater than 0 and at most 100000 (got true)",
    ),
    (
        with_value("train.batch_size", None),
        "train.batch_size must be an integer greater than 0 and at most 1000000 (got null)",
    ),
    (with_value("train.learning_rate", 0), "train.learning_rate must be a number greater than 0"),
    (
        with_value("train.optimizer", "adamw"),
        "train.optimizer must be one of sgd, adam, rmsprop (got 'adamw')",
    ),
    (with_value("train.loss", "mse"), "train.loss must be one of categorical_crossentropy"),
    (
        default_raw() | {"train": default_raw()["train"] | {"momentum": 0.9, "optimizer": "adam"}},
        "train.momentum applies only to train.optimizer sgd (got momentum 0.9 with optimizer adam)",
    ),
    (
        with_value("base.dataset", "svhn"),
        "base.dataset must be one of mnist, fashion_mnist, cifar10 (got 'svhn')",
    ),
    (with_value("base.seed", -3), "base.seed must be an integer from 0 to 4294967295 (got -3)"),
    (with_value("model.activation", "swish"), "model.activation must be one of relu"),
    (with_value("model.type", "rnn"), "model.type must be one of mlp, cnn (got 'rnn')"),
    (
        with_value("model.hidden_units", []),
        "model.hidden_units must be a non-empty list of integers greater than 0 (got [])",
    ),
    (
        with_value("model.hidden_units", [784, -32]),
        "model.hidden_units.1 must be a non-empty list of integers greater than 0 (got -32)",
    ),
    (
        with_value("model.hidden_units", 784),
        "model.hidden_units must be a non-empty list of integers greater than 0 (got 784)",
    ),
    (
        with_value("preprocess.validation_split", 1.0),
        "preprocess.validation_split must be a number greater than 0 and less than 1 (got 1.0)",
    ),
    (
        with_value("preprocess.train_fraction", 0),
        "preprocess.train_fraction must be a number greater than 0 and at most 1 (got 0)",
    ),
    (
        with_value("plot.sample_grid", 100),
        "plot.sample_grid must be an integer from 1 to 30 (got 100)",
    ),
    (
        with_value("train.epoch", 5),
        "train.epoch is not a known key (allowed here: optimizer, learning_rate",
    ),
    (with_value("train.loop", "while"), "train.loop must be one of fit, scan (got 'while')"),
    (
        without("train.epochs"),
        "train.epochs is missing; it must be an integer greater than 0 and at most 100000",
    ),
    (without("mlflow"), "section mlflow is missing"),
    (
        default_raw() | {"extra": {"a": 1}},
        "extra is not a known key (allowed here: base, preprocess",
    ),
    (default_raw() | {"train": 5}, "train must be a mapping of keys to values (got 5)"),
    ([1, 2], "params.yaml: must be a mapping of sections (got [1, 2])"),
    (None, "params.yaml: must be a mapping of sections (got null)"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[message[:60] for _, message in BAD])
def test_bad_value_is_named(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("base: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line 1"):
        load_params(path)
    assert not (tmp_path / "pwned").exists()


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("base:\n  seed: 1\n  dataset: [mnist\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line \d"):
        load_params(path)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"params.yaml: not found at"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage", ["download", "preprocess"])
def test_stage_exits_2_with_one_line_and_touches_nothing(workspace: Path, stage: str) -> None:
    raw = with_value("train.epochs", -1)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw))
    before = files_under(workspace)
    result = run_stage(workspace, stage)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [
        "error: params.yaml: train.epochs must be an integer greater than 0 and at most 100000 "
        "(got -1)"
    ]
    assert "Traceback" not in result.stderr
    assert files_under(workspace) == before


def _dvc_stage_params(stage: dict[str, Any]) -> set[str]:
    keys: set[str] = set()
    for entry in stage.get("params", []):
        keys.update(entry.keys() if isinstance(entry, dict) else [entry])
    return keys


def test_dvc_yaml_params_schema_agree() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    raw = default_raw()
    # Every stage in dvc.yaml reads exactly the params the code declares for it.
    assert set(dvc) == set(STAGE_PARAMS)
    for name, stage in dvc.items():
        assert _dvc_stage_params(stage) == set(STAGE_PARAMS[name]), name
        assert stage["cmd"] == f"python -m stages.{name}"
        assert f"stages/{name}.py" in stage["deps"]
    # params.yaml has exactly the schema's keys, and every key is read by some stage.
    schema = {s: set(m.annotation.model_fields) for s, m in Params.model_fields.items()}
    assert {s: set(v) for s, v in raw.items()} == schema
    used = {key for keys in STAGE_PARAMS.values() for key in keys}
    for section, fields in schema.items():
        for field in fields:
            assert section in used or f"{section}.{field}" in used, f"{section}.{field} unused"


def test_flatten_names_every_leaf() -> None:
    params = load_params(REPO / "params.yaml")
    flat = flatten(params, STAGE_PARAMS["train"])
    assert flat["train.learning_rate"] == 0.01
    assert flat["model.hidden_units"] == [784, 32]
    assert "preprocess.validation_split" not in flat
    assert flatten(params, ("base.dataset",)) == {"base.dataset": "mnist"}


# params.yaml means one thing to DVC and to the pipeline ------------------------------------


def params_text(replace: tuple[str, str]) -> str:
    text = (REPO / "params.yaml").read_text()
    assert replace[0] in text, replace[0]
    return text.replace(*replace, 1)


def test_params_are_read_as_dvc_reads_them(tmp_path: Path) -> None:
    """YAML 1.2 through DVC's own parser: the run and `dvc exp show` see the same values."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(
        params_text(("learning_rate: 0.01", "learning_rate: 1e-3")).replace(
            "experiment_name: keras-tutorial", "experiment_name: yes"
        )
    )
    params = load_params(path)
    assert params.train.learning_rate == 0.001  # YAML 1.1 (PyYAML) reads the string "1e-3"
    assert params.mlflow.experiment_name == "yes"  # and True here
    seen_by_dvc = parse_yaml(path.read_text(), str(path))
    assert seen_by_dvc["train"]["learning_rate"] == params.train.learning_rate
    assert seen_by_dvc["mlflow"]["experiment_name"] == params.mlflow.experiment_name


def test_duplicate_key_is_refused_as_dvc_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(params_text(("  epochs: 20", "  epochs: 20\n  epochs: 5")))
    with pytest.raises(ConfigError, match=r'at line \d+: found duplicate key "epochs"'):
        load_params(path)


def test_nesting_bomb_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match=r"^params\.yaml: nested too deeply"):
        load_params(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("base.dataset", "x" * 5000), ("model.hidden_units", {"units": "x" * 5000})],
)
def test_error_lines_quote_at_most_80_characters_of_a_value(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(with_value(key, value))
    message = str(caught.value)
    assert key in message and "..." in message
    assert len(message) < 300, message


def test_unknown_huge_key_is_clipped() -> None:
    raw = default_raw()
    raw["train"]["k" * 5000] = 1
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert len(str(caught.value)) < 400


def test_cnn_with_more_blocks_than_the_image_can_halve_is_refused() -> None:
    raw = with_value("model.type", "cnn")
    raw["model"]["conv_filters"] = [8] * 5
    with pytest.raises(ConfigError, match=r"mnist's 28x28 images allow at most 4"):
        parse_params(raw)
    raw["base"]["dataset"] = "cifar10"
    assert parse_params(raw).model.conv_filters == [8] * 5  # 32x32 halves five times


def test_empty_validation_or_training_split_is_refused_naming_the_keys() -> None:
    import numpy as np

    from mlpipe.data.formats import RawSplits
    from mlpipe.data.preprocessing import preprocess

    x = np.zeros((40, 28, 28), np.uint8)
    y = (np.arange(40) % 10).astype(np.uint8)
    raw = RawSplits(x, y, x[:10], y[:10])
    with pytest.raises(ConfigError, match=r"preprocess\.train_fraction 0\.01 .* empty validation"):
        preprocess(raw, validation_split=0.1, train_fraction=0.01, seed=0)
    with pytest.raises(ConfigError, match=r"preprocess\.validation_split 0\.9 .* empty training"):
        preprocess(raw, validation_split=0.9, train_fraction=0.01, seed=0)
    assert len(preprocess(raw, validation_split=0.1, train_fraction=1.0, seed=0).y_val) == 10


def test_model_too_large_for_memory_is_refused_before_it_is_built() -> None:
    from mlpipe.model.sizing import check_fits_in_memory, parameter_count

    params = load_params(REPO / "params.yaml")
    assert parameter_count(params.model, (28, 28), 10) == 640_890  # the tutorial's network
    huge = params.model.model_copy(update={"hidden_units": [100_000_000]})
    with pytest.raises(ConfigError, match=r"model\.hidden_units \[100000000\] .* needs about"):
        check_fits_in_memory(huge, params.train, (28, 28), 10)


def test_message_comes_from_the_constraint_itself() -> None:
    """A value past the upper bound is told the bound, not a generic 'positive integer'."""
    with pytest.raises(
        ConfigError,
        match=r"train\.batch_size must be an integer greater than 0 "
        r"and at most 1000000 \(got 2000000\)",
    ):
        parse_params(with_value("train.batch_size", 2_000_000))
    with pytest.raises(
        ConfigError,
        match=r"model\.dropout must be a number at least 0 and less "
        r"than 1 \(got 1\.0\)",
    ):
        parse_params(with_value("model.dropout", 1.0))
