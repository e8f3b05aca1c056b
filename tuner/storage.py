"""Where a sweep keeps what it learns: sweeps, problems, trials and winners, in any SQLAlchemy database.

Four typed models (SQLAlchemy 2.0). A problem is one (kernel, lookup key) of one sweep; a trial is one
config measured on a problem, unique per (problem, config), so a re-run of the same sweep skips what is
done and nothing is ever measured twice. Every trial is committed as it finishes: a sweep killed with
SIGKILL loses at most the trials in flight.

Table names carry a `tune_` prefix because Optuna keeps its TPE studies in the same database, and
Optuna's own schema already owns `studies` and `trials`.

Every database access goes through `Storage.session(operation)`, which commits, rolls back on error, and
turns any SQLAlchemyError into a `StorageError` that names the URL and the operation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from gdn_kernels import Config, Key

DEFAULT_DB_URL = "sqlite:///gdn_tune.db"
# How long a SQLite connection waits on another writer's lock before failing. Only the sweep's main
# process writes, so this covers readers (`gdn-tune status` during a sweep) and Optuna's own engine.
SQLITE_BUSY_TIMEOUT_S = 30


class StorageError(RuntimeError):
    """A database operation failed; the message names the URL and the operation."""


class TrialStatus(StrEnum):
    OK = "ok"  # correct, deterministic, timed
    INFEASIBLE = "infeasible"  # failed to compile for the target or needs more shared memory than it has
    WRONG = "wrong"  # ran, but missed the reference or differed between two runs
    CRASHED = "crashed"  # raised, or took its worker process down (abort, illegal address)
    TIMEOUT = "timeout"  # its worker hung past the trial timeout and was killed


class SweepStatus(StrEnum):
    RUNNING = "running"  # also what a SIGKILLed sweep is left as
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # Ctrl-C or budget spent; re-running the command continues it
    FAILED = "failed"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def key_to_json(key: Key) -> str:
    """The key in its spec's field order: one string per key, stable, the problem's identity."""
    return json.dumps(dict(key.items), separators=(",", ":"))


def key_from_json(text: str) -> Key:
    return Key(tuple(json.loads(text).items()))


def config_to_json(config: Config) -> str:
    """Sorted by parameter name (as Config keeps them): one string per config, the trial's identity."""
    return json.dumps(dict(config.params), separators=(",", ":"), sort_keys=True)


def config_from_json(text: str) -> Config:
    return Config.from_dict(json.loads(text))


class BaseModel(DeclarativeBase):
    pass


class SweepModel(BaseModel):
    """One `gdn-tune sweep` command on one GPU; re-running the same command continues the same row."""

    __tablename__ = "tune_sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Hash of what decides the work (target, kernels and their hashes, keys, strategy, interpret):
    # a re-run with the same fingerprint resumes this sweep instead of starting another.
    fingerprint: Mapped[str] = mapped_column(sa.String(64), index=True)
    target: Mapped[str] = mapped_column(sa.String(32))
    gpu_name: Mapped[str] = mapped_column(sa.String(128))
    compute_capability: Mapped[str] = mapped_column(sa.String(8))
    triton_version: Mapped[str] = mapped_column(sa.String(32))
    torch_version: Mapped[str] = mapped_column(sa.String(64))
    cuda_version: Mapped[str | None] = mapped_column(sa.String(32))
    interpret: Mapped[bool] = mapped_column(sa.Boolean)
    strategy: Mapped[str] = mapped_column(sa.String(16))
    strategy_options: Mapped[str] = mapped_column(sa.Text, default="{}")
    command: Mapped[str] = mapped_column(sa.Text)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    status: Mapped[str] = mapped_column(sa.String(16), default=SweepStatus.RUNNING)

    __table_args__ = (
        sa.CheckConstraint(f"status IN {tuple(s.value for s in SweepStatus)}", name="sweep_status"),
    )

    @classmethod
    def latest_with_fingerprint(cls, session: Session, fingerprint: str) -> SweepModel | None:
        query = sa.select(cls).where(cls.fingerprint == fingerprint).order_by(cls.id.desc()).limit(1)
        return session.scalars(query).first()

    @classmethod
    def latest_for_target(cls, session: Session, target: str) -> list[SweepModel]:
        """Every sweep of `target`, newest first."""
        return list(session.scalars(sa.select(cls).where(cls.target == target).order_by(cls.id.desc())))


class ProblemModel(BaseModel):
    """One (kernel, lookup key) of a sweep: what a table entry will answer."""

    __tablename__ = "tune_problems"

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(sa.ForeignKey("tune_sweeps.id", ondelete="CASCADE"), index=True)
    kernel: Mapped[str] = mapped_column(sa.String(64))
    key_json: Mapped[str] = mapped_column(sa.String(512))
    kernel_hash: Mapped[str] = mapped_column(sa.String(32))
    default_config_json: Mapped[str] = mapped_column(sa.String(512))

    __table_args__ = (sa.UniqueConstraint("sweep_id", "kernel", "key_json", name="problem_per_sweep"),)

    @property
    def key(self) -> Key:
        return key_from_json(self.key_json)

    @property
    def default_config(self) -> Config:
        return config_from_json(self.default_config_json)

    @classmethod
    def of_sweep(cls, session: Session, sweep_id: int) -> list[ProblemModel]:
        return list(session.scalars(sa.select(cls).where(cls.sweep_id == sweep_id).order_by(cls.id)))


class TrialModel(BaseModel):
    """One config measured on one problem. Times are per launch, in milliseconds.

    `spread_ms` is the interquartile range (p75 − p25) of the repetitions; `retimed_ms` is the median of
    the interleaved re-timing the top candidates get before a winner is chosen (None if not re-timed).
    """

    __tablename__ = "tune_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(sa.ForeignKey("tune_problems.id", ondelete="CASCADE"), index=True)
    config_json: Mapped[str] = mapped_column(sa.String(512))
    status: Mapped[str] = mapped_column(sa.String(16))
    median_ms: Mapped[float | None] = mapped_column(sa.Float)
    min_ms: Mapped[float | None] = mapped_column(sa.Float)
    max_ms: Mapped[float | None] = mapped_column(sa.Float)
    spread_ms: Mapped[float | None] = mapped_column(sa.Float)
    repetitions: Mapped[int | None] = mapped_column(sa.Integer)
    retimed_ms: Mapped[float | None] = mapped_column(sa.Float)
    rel_error: Mapped[float | None] = mapped_column(sa.Float)
    compile_seconds: Mapped[float | None] = mapped_column(sa.Float)
    shared_bytes: Mapped[int | None] = mapped_column(sa.Integer)
    error: Mapped[str | None] = mapped_column(sa.Text)
    finished_at: Mapped[datetime] = mapped_column(sa.DateTime, default=_now)

    __table_args__ = (
        sa.UniqueConstraint("problem_id", "config_json", name="trial_per_problem_config"),
        sa.CheckConstraint(f"status IN {tuple(s.value for s in TrialStatus)}", name="trial_status"),
    )

    @property
    def config(self) -> Config:
        return config_from_json(self.config_json)

    @classmethod
    def of_problem(cls, session: Session, problem_id: int) -> list[TrialModel]:
        return list(session.scalars(sa.select(cls).where(cls.problem_id == problem_id).order_by(cls.id)))


class WinnerModel(BaseModel):
    """The config a problem's table entry gets: correct, deterministic, fastest after re-timing."""

    __tablename__ = "tune_winners"

    id: Mapped[int] = mapped_column(primary_key=True)
    problem_id: Mapped[int] = mapped_column(sa.ForeignKey("tune_problems.id", ondelete="CASCADE"))
    trial_id: Mapped[int] = mapped_column(sa.ForeignKey("tune_trials.id", ondelete="CASCADE"))
    time_ms: Mapped[float] = mapped_column(sa.Float)
    default_time_ms: Mapped[float | None] = mapped_column(sa.Float)
    chosen_at: Mapped[datetime] = mapped_column(sa.DateTime, default=_now)

    __table_args__ = (sa.UniqueConstraint("problem_id", name="winner_per_problem"),)


@dataclass(frozen=True)
class Measurement:
    """What a finished trial hands to `Storage.record_trial`; every field but status may be unknown."""

    status: TrialStatus
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    spread_ms: float | None = None
    repetitions: int | None = None
    rel_error: float | None = None
    compile_seconds: float | None = None
    shared_bytes: int | None = None
    error: str | None = None


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `gdn-tune status` read while the sweep writes; it persists in the file once set.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if parsed.database in (None, "", ":memory:"):
            # One in-memory database per connection otherwise: share a single connection.
            kwargs["poolclass"] = StaticPool
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


class Storage:
    """A database of sweeps. `url` is any SQLAlchemy URL; tables are created on first use."""

    def __init__(self, url: str = DEFAULT_DB_URL, must_exist: bool = False) -> None:
        """`must_exist`: for commands that only read, a SQLite file that is not there is an error
        (instead of a new empty database made by a typo in the path)."""
        self.url = url
        try:
            self.engine = _create_engine(url)
        except (ArgumentError, SQLAlchemyError, ValueError) as e:
            raise StorageError(f"{url}: cannot open the database: {e}") from e
        database = self.engine.url.database
        is_file = self.engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
        if must_exist and is_file and not Path(database).exists():
            raise StorageError(f"{url}: no database there (no file {database})")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        with self.session("create the tables") as session:
            BaseModel.metadata.create_all(session.connection())

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def session(self, operation: str) -> Iterator[Session]:
        """A session that commits when the block ends, rolls back if it raises, and names `operation`
        and the URL in the StorageError any database failure becomes."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise StorageError(f"{self.display_url}: {operation} failed: {e}") from e
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()

    # Sweeps -------------------------------------------------------------------------------------
    def open_sweep(self, fingerprint: str, **fields: Any) -> tuple[SweepModel, bool]:
        """The latest sweep with this fingerprint, marked running again, or a new one; and whether it
        was resumed. `fields` are SweepModel columns (a resumed sweep keeps its own)."""
        with self.session("open a sweep") as session:
            sweep = SweepModel.latest_with_fingerprint(session, fingerprint)
            resumed = sweep is not None
            if sweep is None:
                sweep = SweepModel(fingerprint=fingerprint, **fields)
                session.add(sweep)
            else:
                sweep.status = SweepStatus.RUNNING
                sweep.finished_at = None
            session.flush()
            return sweep, resumed

    def close_sweep(self, sweep_id: int, status: SweepStatus) -> None:
        with self.session(f"mark sweep {sweep_id} {status}") as session:
            sweep = session.get(SweepModel, sweep_id)
            if sweep is None:
                raise StorageError(f"{self.display_url}: no sweep {sweep_id}")
            sweep.status = status
            sweep.finished_at = _now()

    def sweeps(self) -> list[SweepModel]:
        with self.session("list the sweeps") as session:
            return list(session.scalars(sa.select(SweepModel).order_by(SweepModel.id)))

    # Problems -----------------------------------------------------------------------------------
    def ensure_problem(
        self, sweep_id: int, kernel: str, key: Key, kernel_hash: str, default: Config
    ) -> ProblemModel:
        """The sweep's problem for (kernel, key), created if it is new."""
        key_json = key_to_json(key)
        with self.session(f"record problem {kernel} {key.label}") as session:
            query = sa.select(ProblemModel).where(
                ProblemModel.sweep_id == sweep_id,
                ProblemModel.kernel == kernel,
                ProblemModel.key_json == key_json,
            )
            problem = session.scalars(query).first()
            if problem is None:
                problem = ProblemModel(
                    sweep_id=sweep_id,
                    kernel=kernel,
                    key_json=key_json,
                    kernel_hash=kernel_hash,
                    default_config_json=config_to_json(default),
                )
                session.add(problem)
                session.flush()
            return problem

    def problems(self, sweep_id: int) -> list[ProblemModel]:
        with self.session(f"list the problems of sweep {sweep_id}") as session:
            return ProblemModel.of_sweep(session, sweep_id)

    # Trials -------------------------------------------------------------------------------------
    def record_trial(self, problem_id: int, config: Config, measurement: Measurement) -> TrialModel:
        """Commit one finished trial. A second trial of the same (problem, config) is a StorageError."""
        fields = {f: getattr(measurement, f) for f in Measurement.__dataclass_fields__}
        fields["status"] = TrialStatus(measurement.status).value
        with self.session(f"record trial {config.label} of problem {problem_id}") as session:
            trial = TrialModel(problem_id=problem_id, config_json=config_to_json(config), **fields)
            session.add(trial)
            session.flush()
            return trial

    def trials(self, problem_id: int) -> list[TrialModel]:
        with self.session(f"read the trials of problem {problem_id}") as session:
            return TrialModel.of_problem(session, problem_id)

    def set_retimed(self, retimed_ms: Mapping[int, float]) -> None:
        """Store the interleaved re-timing of trials, by trial id."""
        with self.session("record re-timed trials") as session:
            for trial_id, ms in retimed_ms.items():
                trial = session.get(TrialModel, trial_id)
                if trial is not None:
                    trial.retimed_ms = ms

    # Winners ------------------------------------------------------------------------------------
    def set_winner(
        self, problem_id: int, trial_id: int, time_ms: float, default_time_ms: float | None
    ) -> WinnerModel:
        """The problem's winner, replacing an earlier pick (a resumed sweep may measure more)."""
        with self.session(f"record the winner of problem {problem_id}") as session:
            trial = session.get(TrialModel, trial_id)
            if trial is None or trial.problem_id != problem_id or trial.status != TrialStatus.OK:
                # A wrong, crashed or foreign trial must never reach a table.
                raise StorageError(
                    f"{self.display_url}: trial {trial_id} is not an ok trial of problem {problem_id}"
                )
            winner = session.scalars(
                sa.select(WinnerModel).where(WinnerModel.problem_id == problem_id)
            ).first()
            if winner is None:
                winner = WinnerModel(problem_id=problem_id, trial_id=trial_id, time_ms=time_ms)
                session.add(winner)
            winner.trial_id = trial_id
            winner.time_ms = time_ms
            winner.default_time_ms = default_time_ms
            winner.chosen_at = _now()
            session.flush()
            return winner

    def winner(self, problem_id: int) -> WinnerModel | None:
        with self.session(f"read the winner of problem {problem_id}") as session:
            return session.scalars(sa.select(WinnerModel).where(WinnerModel.problem_id == problem_id)).first()

    def trial_counts(self, sweep_id: int) -> dict[str, int]:
        """Trials of a sweep by status."""
        with self.session(f"count the trials of sweep {sweep_id}") as session:
            query = (
                sa.select(TrialModel.status, sa.func.count())
                .join(ProblemModel, ProblemModel.id == TrialModel.problem_id)
                .where(ProblemModel.sweep_id == sweep_id)
                .group_by(TrialModel.status)
            )
            return {status: count for status, count in session.execute(query)}
