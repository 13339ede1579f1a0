"""The Optuna study behind a sweep: its storage, sampler and pruner, what a trial is asked to
try, and trials whose worker died.

On one machine the study lives in Optuna's journal file in the workspace (`.sweeps/`, outside
DVC's temporary copies), which several local processes may share; across machines, in Optuna's
RDB storage on the team's PostgreSQL (`--storage postgresql://user@host/optuna`, the password
in `~/.pgpass`). docs/decisions/0008-sweeps.md says why these.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlpipe.errors import ConfigError, TrackingError, redact
from mlpipe.search.spec import SweepSpec

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SWEEPS_DIR = ".sweeps"
SPACE_ATTR = "mlpipe.space"
OWNER_ATTR = "mlpipe.owner"
ID_ATTR = "mlpipe.study_id"
CREATOR_WAIT_SECONDS = 10
RDB_ATTEMPTS = 3
# Optuna's categorical choices are plain values: a list (model.hidden_units) travels as JSON.
ENCODED = "json:"


def default_storage(workspace: Path, study: str) -> str:
    """The study's journal file in the workspace, shared by this machine's workers."""
    return str(workspace / SWEEPS_DIR / f"{study}.journal")


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """Optuna's storage for `storage`: a database URL (RDB) or a journal file's path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" not in storage:
        path = Path(storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    check_storage_url(storage)
    for attempt in range(RDB_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                storage, engine_kwargs={"connect_args": {"connect_timeout": 5}}
            )
        except Exception as exc:  # SQLAlchemy and the driver raise many types
            # Two machines making Optuna's tables in a new database at once: one of them
            # fails, and finds them made when it tries again.
            if attempt + 1 < RDB_ATTEMPTS:
                time.sleep(1 + attempt)
                continue
            failure = exc
    from mlpipe.errors import first_line

    raise TrackingError(
        f"sweep storage {redact(storage)} cannot be used ({redact(first_line(failure))}); "
        "check --storage and that its database exists (scripts/team-db.sh makes one)"
    ) from failure


def check_storage_url(url: str) -> None:
    """Refuse a database URL that holds a password (it would show in the process list)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password or "password=" in parts.query:
        raise ConfigError(
            f"--storage {redact(url)}: holds a password, which would show in the process list; "
            "put it in ~/.pgpass (or PGPASSFILE) and leave it out of the URL"
        )
    if parts.scheme.startswith(("postgresql", "mysql")):
        from mlpipe.tracking.reachability import check_reachable

        check_reachable(url, "--storage", "sweep storage")


def make_sampler(spec: SweepSpec, seed: int | None = -1) -> optuna.samplers.BaseSampler:
    """The sampler sweep.yaml names, seeded with its seed unless `seed` is given."""
    import optuna

    seed = spec.sampler.seed if seed == -1 else seed
    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.sampler.name == "grid":
        return optuna.samplers.GridSampler(_grid(spec), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _grid(spec: SweepSpec) -> dict[str, list[Any]]:
    grid = {}
    for key, dimension in spec.space.items():
        if dimension.choices is not None:
            grid[key] = [_encode(value) for value in dimension.choices]
        elif dimension.step is not None:
            count = round((dimension.high - dimension.low) / dimension.step) + 1
            grid[key] = [dimension.low + index * dimension.step for index in range(count)]
        else:
            raise ConfigError(
                f"sweep.yaml: space.{key}: the grid sampler needs choices or a step for it"
            )
    return grid


def grid_size(spec: SweepSpec) -> int:
    """How many points the grid sampler has to try."""
    size = 1
    for values in _grid(spec).values():
        size *= len(values)
    return size


def make_pruner(pruner: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Optuna's pruner; epochs count from 1 and the first `warmup_epochs` are never pruned."""
    import optuna

    first = pruner["warmup_epochs"] + 1  # the first epoch a trial may be stopped at
    if pruner["name"] == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner["startup_trials"], n_warmup_steps=first
        )
    if pruner["name"] == "hyperband":
        whole = pruner.get("max_epochs") or "auto"  # "auto": from the first trial that ends
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=whole)
    if pruner["name"] == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first)
    return optuna.pruners.NopPruner()


def open_study(spec: SweepSpec, storage: str) -> optuna.Study:
    """The study, created the first time; refused when its space changed since it began."""
    return begin_study(spec, storage)[0]


def begin_study(spec: SweepSpec, storage: str) -> tuple[optuna.Study, bool]:
    """The study, and whether this process created it.

    Of processes that start one study together, Optuna lets one create it: that one gives it
    its id and its space (and makes its MLflow parent run); the others wait for them.
    """
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial instead
    opened = open_storage(storage)
    options = {
        "study_name": spec.study,
        "storage": opened,
        "sampler": make_sampler(spec),
        "pruner": make_pruner(spec.pruner.model_dump()),
    }
    created = True
    try:
        study = optuna.create_study(direction=spec.objective.direction, **options)
        study.set_user_attr(SPACE_ATTR, spec.canonical_space())
        study.set_user_attr(ID_ATTR, uuid.uuid4().hex)
    except DuplicatedStudyError:
        created = False
        study = optuna.load_study(**options)
        # The seed repeats a study begun and run by one `sweep run`. A worker that joins one
        # (on another machine, or a later run) would propose the creator's points again:
        # its sampler draws fresh.
        study.sampler = make_sampler(spec, seed=None)
    began = _wait_for(study, SPACE_ATTR)
    if began != spec.canonical_space():
        raise ConfigError(
            f"sweep.yaml: study {spec.study} began with another space, set or metric "
            f"({began}); its trials would not compare: give this search another study name"
        )
    if study.direction.name.lower() != spec.objective.direction:
        raise ConfigError(
            f"sweep.yaml: study {spec.study} began to {study.direction.name.lower()} its "
            "objective; give this search another study name"
        )
    return study, created


def delete_study(name: str, storage: str) -> None:
    import optuna

    optuna.delete_study(study_name=name, storage=open_storage(storage))


def study_id(study: optuna.Study) -> str:
    """The study's own id: a study made again under an old name has another."""
    return _wait_for(study, ID_ATTR)


def _wait_for(study: optuna.Study, key: str) -> str:
    """A user attr the study's creator sets right after creating it."""
    value = wait_for_attr(study, key, CREATOR_WAIT_SECONDS)
    if value is None:  # its creator died in between: this one sets it
        study.set_user_attr(key, uuid.uuid4().hex if key == ID_ATTR else "")
        value = study.user_attrs[key]
    return value


def wait_for_attr(study: optuna.Study, key: str, seconds: float) -> Any:
    """The study's user attr `key`, once another process has set it; None after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = study.user_attrs.get(key)
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def load_existing(spec: SweepSpec, storage: str) -> optuna.Study:
    """The study as it is, for reading; ConfigError when it has not begun."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    missing = ConfigError(
        f"study {spec.study} has no trials in {shown_storage(storage)} yet; start it with "
        "`python -m mlpipe.sweep run`"
    )
    if "://" not in storage and not Path(storage).is_file():
        raise missing
    try:
        return optuna.load_study(study_name=spec.study, storage=open_storage(storage))
    except KeyError as exc:
        raise missing from exc


def shown_storage(storage: str) -> str:
    """The storage as a message names it: a database URL redacted, a journal's path."""
    return redact(storage)


def suggest(trial: optuna.trial.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The params this trial tries: each key of the space whose `when` holds, in order."""
    chosen: dict[str, Any] = {}
    pending = dict(spec.space)
    while pending:
        ready = [k for k, d in pending.items() if all(c in chosen for c in d.when or {})]
        if not ready:  # a `when` on a key that was itself left out
            break
        for key in ready:
            dimension = pending.pop(key)
            if all(chosen.get(c) == v for c, v in (dimension.when or {}).items()):
                chosen[key] = _suggest_one(trial, key, dimension)
    return chosen


def _suggest_one(trial: optuna.trial.Trial, key: str, dimension: Any) -> Any:
    if dimension.choices is not None:
        encoded = [_encode(value) for value in dimension.choices]
        return _decode(trial.suggest_categorical(key, encoded))
    if dimension.integers:
        step = dimension.step or 1
        return trial.suggest_int(key, dimension.low, dimension.high, step=step, log=dimension.log)
    return trial.suggest_float(
        key, float(dimension.low), float(dimension.high), log=dimension.log, step=dimension.step
    )


def _encode(value: Any) -> Any:
    return ENCODED + json.dumps(value) if isinstance(value, list | dict) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(ENCODED):
        return json.loads(value.removeprefix(ENCODED))
    return value


def decoded(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as Optuna keeps them, with encoded lists back as lists."""
    return {key: _decode(value) for key, value in params.items()}


def own(trial: optuna.trial.Trial) -> None:
    """Mark the trial as this process's, so that a later run can tell when its worker died."""
    from mlpipe.tracking.orphans import owner_tags

    trial.set_user_attr(OWNER_ATTR, owner_tags())


def close_dead_trials(study: optuna.Study, close_run: Any) -> list[int]:
    """Fail the RUNNING trials of this host whose worker is gone (Optuna's heartbeat does not
    cover ask and tell); `close_run(run_id)` ends their MLflow runs. Returns their numbers."""
    from optuna.trial import TrialState

    from mlpipe.tracking.orphans import TAG_HOST, TAG_PID, TAG_PID_STARTED, owner_alive

    closed = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = frozen.user_attrs.get(OWNER_ATTR) or {}
        if owner.get(TAG_HOST) != socket.gethostname():
            continue  # another machine's: only it can tell whether its worker lives
        if owner_alive(int(owner.get(TAG_PID, 0)), float(owner.get(TAG_PID_STARTED, 0))):
            continue
        tell(study, frozen.number, state=TrialState.FAIL)
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if run_id:
            close_run(run_id)
        log.warning(
            "trial %d was left RUNNING by a worker that died (pid %s); marked FAIL",
            frozen.number,
            owner.get(TAG_PID),
        )
        closed.append(frozen.number)
    return closed


def tell(study: optuna.Study, trial: Any, value: float | None = None, state: Any = None) -> None:
    """`study.tell`, outside Optuna's own loop: the grid sampler asks a study to stop after
    its last point, which Optuna allows only inside `optimize`; the trial is stored first."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def counts(study: optuna.Study) -> tuple[int, int]:
    """Trials that count toward the total (COMPLETE, PRUNED), and those still RUNNING."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return done, sum(t.state == TrialState.RUNNING for t in trials)


def surplus(study: optuna.Study, number: int, total: int) -> bool:
    """Whether trial `number` is one too many: as many trials before it count or still run as
    the study needs (workers on other machines asked at the same moment)."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False)
    return sum(t.number < number and t.state in live for t in trials) >= total
