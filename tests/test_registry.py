"""Champion and challenger aliases against a temporary SQLite registry."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlpipe.registry import CHALLENGER, CHAMPION, promote

NAME = "keras-tutorial-mnist"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    return client


def new_version(client: MlflowClient, tmp_path: Path) -> int:
    return int(client.create_model_version(NAME, source=str(tmp_path)).version)


def holder(client: MlflowClient, alias: str) -> int:
    return int(client.get_model_version_by_alias(NAME, alias).version)


def test_first_version_becomes_champion(client: MlflowClient, tmp_path: Path) -> None:
    version = new_version(client, tmp_path)
    decision = promote(client, NAME, version, 0.92)
    assert decision.promoted
    assert "no version held champion" in decision.reason
    assert holder(client, CHAMPION) == holder(client, CHALLENGER) == version


def test_worse_version_is_challenger_only(client: MlflowClient, tmp_path: Path) -> None:
    first = new_version(client, tmp_path)
    promote(client, NAME, first, 0.92)
    second = new_version(client, tmp_path)
    decision = promote(client, NAME, second, 0.90)
    assert not decision.promoted
    assert "does not beat champion version 1 (0.9200)" in decision.reason
    assert holder(client, CHAMPION) == first
    assert holder(client, CHALLENGER) == second


def test_equal_accuracy_does_not_take_champion(client: MlflowClient, tmp_path: Path) -> None:
    first = new_version(client, tmp_path)
    promote(client, NAME, first, 0.92)
    second = new_version(client, tmp_path)
    assert not promote(client, NAME, second, 0.92).promoted
    assert holder(client, CHAMPION) == first


def test_better_version_takes_champion(client: MlflowClient, tmp_path: Path) -> None:
    promote(client, NAME, new_version(client, tmp_path), 0.92)
    promote(client, NAME, new_version(client, tmp_path), 0.90)
    third = new_version(client, tmp_path)
    decision = promote(client, NAME, third, 0.98)
    assert decision.promoted
    assert "beats champion version 1 (0.9200)" in decision.reason
    assert holder(client, CHAMPION) == holder(client, CHALLENGER) == third
    assert client.get_model_version(NAME, str(third)).tags["test_accuracy"] == "0.980000"
