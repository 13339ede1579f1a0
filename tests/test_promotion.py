"""Champion and challenger aliases against a temporary SQLite registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlpipe.errors import TrackingError
from mlpipe.tracking.promotion import CHALLENGER, CHAMPION, Score, promote

NAME = "keras-tutorial-mnist"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    return client


def new_version(client: MlflowClient, tmp_path: Path) -> int:
    return int(client.create_model_version(NAME, source=str(tmp_path)).version)


def ranked(client: MlflowClient, version: int, accuracy: float, key: str = "val_accuracy"):
    """Promote `version` as evaluate does: ranked on a validation metric, test metrics held out."""
    held_out = {"test_accuracy": 0.5, "test_loss": 1.5}
    return promote(client, NAME, version, Score(key, accuracy), held_out)


def holder(client: MlflowClient, alias: str) -> int:
    return int(client.get_model_version_by_alias(NAME, alias).version)


def test_first_version_becomes_champion(client: MlflowClient, tmp_path: Path) -> None:
    version = new_version(client, tmp_path)
    decision = ranked(client, version, 0.92)
    assert decision.promoted
    assert "no version held champion" in decision.reason
    assert holder(client, CHAMPION) == holder(client, CHALLENGER) == version


def test_worse_version_is_challenger_only(client: MlflowClient, tmp_path: Path) -> None:
    first = new_version(client, tmp_path)
    ranked(client, first, 0.92)
    second = new_version(client, tmp_path)
    decision = ranked(client, second, 0.90)
    assert not decision.promoted
    assert "does not beat champion version 1 (0.9200)" in decision.reason
    assert holder(client, CHAMPION) == first
    assert holder(client, CHALLENGER) == second


def test_equal_accuracy_does_not_take_champion(client: MlflowClient, tmp_path: Path) -> None:
    first = new_version(client, tmp_path)
    ranked(client, first, 0.92)
    second = new_version(client, tmp_path)
    assert not ranked(client, second, 0.92).promoted
    assert holder(client, CHAMPION) == first


def test_better_version_takes_champion(client: MlflowClient, tmp_path: Path) -> None:
    ranked(client, new_version(client, tmp_path), 0.92)
    ranked(client, new_version(client, tmp_path), 0.90)
    third = new_version(client, tmp_path)
    decision = ranked(client, third, 0.98)
    assert decision.promoted
    assert "beats champion version 1 (0.9200)" in decision.reason
    assert holder(client, CHAMPION) == holder(client, CHALLENGER) == third
    assert client.get_model_version(NAME, str(third)).tags["val_accuracy"] == "0.980000"


def test_a_loss_ranks_lower_first_and_every_version_keeps_its_scores(
    client: MlflowClient, tmp_path: Path
) -> None:
    first = new_version(client, tmp_path)
    ranked(client, first, 0.30, key="val_loss")
    second = new_version(client, tmp_path)
    decision = ranked(client, second, 0.25, key="val_loss")
    assert decision.promoted
    assert "version 2 (val_loss 0.2500) beats champion version 1 (0.3000)" in decision.reason
    assert not ranked(client, new_version(client, tmp_path), 0.40, key="val_loss").promoted
    tags = client.get_model_version(NAME, str(second)).tags
    assert (tags["val_loss"], tags["test_accuracy"], tags["test_loss"]) == (
        "0.250000",
        "0.500000",
        "1.500000",
    )


def test_a_champion_ranked_on_another_metric_is_beaten(
    client: MlflowClient, tmp_path: Path
) -> None:
    """promote_by changed between runs: the holder has no score on the new metric."""
    ranked(client, new_version(client, tmp_path), 0.99, key="val_accuracy")
    second = new_version(client, tmp_path)
    assert ranked(client, second, 0.9, key="val_loss").promoted
    assert holder(client, CHAMPION) == second


def test_deleted_version_is_one_line_naming_it(client: MlflowClient, tmp_path: Path) -> None:
    version = new_version(client, tmp_path)
    client.delete_model_version(NAME, str(version))
    with pytest.raises(TrackingError, match=rf"{NAME} version {version} .* is not in the registry"):
        ranked(client, version, 0.9)


ROUNDS = 20


def _racer(uri: str, versions: list[int], accuracies: list[float], barrier, slow: bool) -> None:
    """One evaluate stage's promotions, each started together with the other racer's.

    With `slow`, every read of the champion is followed by a pause, so an unlocked
    read-compare-write would interleave with the other racer's almost every round.
    """
    import random

    from mlpipe.tracking.promotion import promote as promote_version

    racer = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if slow:
        read = racer.get_model_version_by_alias

        def slow_read(*args, **kwargs):
            found = read(*args, **kwargs)
            time.sleep(random.uniform(0.0, 0.03))
            return found

        racer.get_model_version_by_alias = slow_read
    for version, accuracy in zip(versions, accuracies, strict=True):
        barrier.wait()
        promote_version(racer, NAME, version, Score("val_accuracy", accuracy), {})
        barrier.wait()


@pytest.mark.slow  # processes started, killed or raced: seconds each
def test_two_promotions_racing_never_leave_a_worse_champion(
    client: MlflowClient, tmp_path: Path
) -> None:
    """Two evaluate stages finish together, ROUNDS times: the champion is always the best."""
    import multiprocessing
    import random

    uri = client.tracking_uri
    rng = random.Random(7)
    versions = [new_version(client, tmp_path) for _ in range(2 * ROUNDS)]
    # Both of each round's models beat every earlier one, so both try to take champion and
    # only a read-compare-write that is not interleaved keeps the better of the two.
    accuracies = []
    for round_ in range(ROUNDS):
        base = 0.5 + 0.02 * round_
        accuracies += rng.sample([round(base + 0.001, 6), round(base + 0.005, 6)], 2)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3, timeout=120)
    racers = [
        context.Process(target=_racer, args=(uri, versions[i::2], accuracies[i::2], barrier, True))
        for i in (0, 1)
    ]
    for racer in racers:
        racer.start()
    best = float("-inf")
    wrong = []
    try:
        for round_ in range(ROUNDS):
            barrier.wait()
            barrier.wait()
            best = max(best, *accuracies[2 * round_ : 2 * round_ + 2])
            champion = client.get_model_version_by_alias(NAME, CHAMPION)
            if float(champion.tags["val_accuracy"]) != best:
                wrong.append((round_, champion.version, champion.tags["val_accuracy"], best))
    finally:
        for racer in racers:
            racer.join(timeout=60)
    assert [racer.exitcode for racer in racers] == [0, 0]
    assert not wrong, f"a worse model held champion after these rounds: {wrong}"
