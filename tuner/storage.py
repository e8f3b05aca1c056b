"""Where a sweep keeps what it learns: sweeps, problems, trials and winners, in any SQLAlchemy database.

Four typed models (SQLAlchemy 2.0). A problem is one (kernel, lookup key) of one sweep; a trial is one
config measured on a problem, unique per (problem, config), so a re-run of the same sweep skips what is
done and nothing is ever measured twice. Every trial is committed as it finishes: a sweep killed with
SIGKILL loses at most the trials in flight.

Table names carry a `tune_` prefix because Optuna keeps its TPE studies in the same database, and
Optuna's own schema already owns `studies` and `trials`.

Every database access goes through `Storage.session(operation)`, which commits, rolls back on error, and
turns any SQLAlchemyError into a `StorageError` that names the URL and the operation.

The schema is Alembic's (gdn_tune/migrations), upgraded when a Storage opens a database, so a database
made by an older release keeps working. Several sweep processes, on one host or many, can share one
PostgreSQL database: each claims a problem at a time (`claim_problem`, a row lock taken with
SELECT ... FOR UPDATE SKIP LOCKED), keeps its claims alive with `heartbeat`, and marks them done with
`finish_problem`; a claim whose heartbeat stopped for the grace period belongs to a dead process and
goes back to the pool. Heartbeats are stamped with the database server's clock, so hosts whose clocks
differ still agree on how old a claim is.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from gdn_kernels import Config, Key

from .constants import DEFAULT_DB_URL
from .errors import DuplicateTrialError, StorageError
from .trial_result import Measurement, TrialStatus

# How long a SQLite connection waits on another writer's lock before failing. Only the sweep's main
# process writes, so this covers readers (`gdn-tune status` during a sweep) and Optuna's own engine.
SQLITE_BUSY_TIMEOUT_S = 30


# Seconds without a heartbeat after which a problem's claim is taken to belong to a dead process. The
# sweep's main loop wakes at least once a second, and the longest thing it waits on is a replacement
# worker starting (2 to 5 s: torch, triton, a CUDA context); 60 s is that many times over, and what a
# SIGKILLed host's problems wait before another host takes them.
DEFAULT_CLAIM_GRACE_S = 60.0


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
    fingerprint: Mapped[str] = mapped_column(sa.String(64), index=True, unique=True)
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
    # The process measuring it ("host:pid:tag", see `claimant_name`); kept after it is done, as who did it.
    claimed_by: Mapped[str | None] = mapped_column(sa.String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(sa.DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(sa.DateTime)  # the database's clock, UTC
    done_at: Mapped[datetime | None] = mapped_column(sa.DateTime)  # search and pick over

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
    worker: Mapped[str | None] = mapped_column(sa.String(160))  # "<claimant>/<device>" that measured it

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
class Claim:
    """A problem this process now measures; `taken_over_from` names a claimant whose heartbeat stopped."""

    problem_id: int
    taken_over_from: str | None = None


def claimant_name(tag: str) -> str:
    """Who claims work, in a form that says where to look: host, process id, and a random `tag` (a
    process id is reused once its process has died, and a claim must not outlive its owner)."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{tag}"


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets `gdn-tune status` read while the sweep writes; it persists in the file once set.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def database_url(url: str) -> URL:
    """`url` parsed; a plain postgresql:// URL gets psycopg 3 as its driver when it is installed.

    SQLAlchemy reaches PostgreSQL through a driver it names in the URL and defaults to psycopg2, which
    gdn-tune does not install; the `postgres` extra installs psycopg 3 (`pip install gdn-tune[postgres]`).
    """
    parsed = make_url(url)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is not None:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _create_engine(url: str) -> Engine:
    parsed = database_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        if parsed.database in (None, "", ":memory:"):
            # One in-memory database per connection otherwise: share a single connection.
            kwargs["poolclass"] = StaticPool
    else:
        # A server may drop idle connections (a restart, a proxy's idle timeout) during a long sweep:
        # test each connection before use instead of failing the next commit.
        kwargs["pool_pre_ping"] = True
    engine = sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def database_now(session: Session) -> datetime:
    """Now, naive UTC, by the database server's clock on PostgreSQL (every host of a sweep compares
    heartbeats on that one clock), by this host's clock elsewhere (SQLite has no server)."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(sa.select(sa.func.now()))
        assert isinstance(now, datetime)
        return now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
    return _now()


class Storage:
    """A database of sweeps. `url` is any SQLAlchemy URL; the schema is created or upgraded on open."""

    def __init__(self, url: str = DEFAULT_DB_URL, must_exist: bool = False) -> None:
        """`must_exist`: for commands that only read, a SQLite file that is not there is an error
        (instead of a new empty database made by a typo in the path)."""
        from .migrations import SchemaError, upgrade_schema

        self.url = url
        try:
            self.engine = _create_engine(url)
        except (ArgumentError, SQLAlchemyError, ValueError, ImportError) as e:
            hint = ""
            if isinstance(e, ImportError) and "psycopg" in str(e):
                hint = " (PostgreSQL needs a driver: pip install 'gdn-tune[postgres]')"
            raise StorageError(f"{url}: cannot open the database: {e}{hint}") from e
        database = self.engine.url.database
        is_file = self.engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:")
        if must_exist and is_file and not Path(database).exists():
            raise StorageError(f"{url}: no database there (no file {database})")
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            self.schema_revision = upgrade_schema(self.engine)
        except (SQLAlchemyError, CommandError, SchemaError) as e:
            raise StorageError(f"{self.display_url}: create or upgrade the tables failed: {e}") from e

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def full_url(self) -> str:
        """The URL with its password and driver, for another library's engine (Optuna's RDBStorage)."""
        return self.engine.url.render_as_string(hide_password=False)

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
        """The sweep with this fingerprint, marked running again, or a new one; and whether it was
        resumed (or joined: another process may be running it). `fields` are SweepModel columns (a
        resumed sweep keeps its own)."""
        for attempt in range(2):
            try:
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
            except StorageError as e:
                # Another process inserted the same fingerprint between our read and our insert: the
                # unique index refused ours; read theirs.
                if attempt or not isinstance(e.__cause__, IntegrityError):
                    raise
        raise AssertionError("unreachable")

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
        """The sweep's problem for (kernel, key), created if it is new (by this process or, at the same
        moment, another one: the unique constraint keeps one row, and the loser reads it)."""
        key_json = key_to_json(key)
        query = sa.select(ProblemModel).where(
            ProblemModel.sweep_id == sweep_id,
            ProblemModel.kernel == kernel,
            ProblemModel.key_json == key_json,
        )
        for attempt in range(2):
            try:
                with self.session(f"record problem {kernel} {key.label}") as session:
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
            except StorageError as e:
                if attempt or not isinstance(e.__cause__, IntegrityError):
                    raise
        raise AssertionError("unreachable")

    def problems(self, sweep_id: int) -> list[ProblemModel]:
        with self.session(f"list the problems of sweep {sweep_id}") as session:
            return ProblemModel.of_sweep(session, sweep_id)

    # Claims -------------------------------------------------------------------------------------
    def claim_problem(
        self,
        sweep_id: int,
        problem_ids: Collection[int],
        claimant: str,
        grace_s: float,
        include_done: bool = False,
    ) -> Claim | None:
        """Claim the first of `problem_ids` that no live process holds, or None when there is none.

        Free: never claimed, released, or claimed by a process whose heartbeat is older than `grace_s`;
        with `include_done`, also a problem marked done (a later run may have more to measure on it).
        The row is read with FOR UPDATE SKIP LOCKED: a row another process is claiming at this instant
        is skipped instead of waited for, so two processes never claim one problem and never queue
        behind each other.
        """
        if not problem_ids:
            return None
        with self.session(f"claim a problem of sweep {sweep_id}") as session:
            now = database_now(session)
            stale = now - timedelta(seconds=grace_s)
            unclaimed = sa.or_(ProblemModel.claimed_by.is_(None), ProblemModel.heartbeat_at < stale)
            free = sa.and_(unclaimed, ProblemModel.done_at.is_(None))
            if include_done:
                free = sa.or_(free, ProblemModel.done_at.is_not(None))
            query = (
                sa.select(ProblemModel)
                .where(ProblemModel.sweep_id == sweep_id, ProblemModel.id.in_(list(problem_ids)), free)
                .order_by(ProblemModel.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            problem = session.scalars(query).first()
            if problem is None:
                return None
            dead = problem.claimed_by if problem.done_at is None and problem.claimed_by else None
            problem.claimed_by = claimant
            problem.claimed_at = problem.heartbeat_at = now
            problem.done_at = None
            return Claim(problem.id, dead if dead != claimant else None)

    def done_problem_ids(self, sweep_id: int, problem_ids: Collection[int]) -> set[int]:
        """Those of `problem_ids` marked done (by any process)."""
        if not problem_ids:
            return set()
        with self.session(f"read the finished problems of sweep {sweep_id}") as session:
            query = sa.select(ProblemModel.id).where(
                ProblemModel.sweep_id == sweep_id,
                ProblemModel.id.in_(list(problem_ids)),
                ProblemModel.done_at.is_not(None),
            )
            return set(session.scalars(query))

    def heartbeat(self, claimant: str, problem_ids: Collection[int]) -> set[int]:
        """Refresh `claimant`'s claims on `problem_ids`; returns those it still holds (a claim whose
        heartbeat came too late may have been taken over by another process)."""
        if not problem_ids:
            return set()
        held = sa.and_(
            ProblemModel.id.in_(list(problem_ids)),
            ProblemModel.claimed_by == claimant,
            ProblemModel.done_at.is_(None),
        )
        with self.session(f"heartbeat of {claimant}") as session:
            now = database_now(session)
            session.execute(sa.update(ProblemModel).where(held).values(heartbeat_at=now))
            return set(session.scalars(sa.select(ProblemModel.id).where(held)))

    def release_claims(self, claimant: str, problem_ids: Collection[int]) -> None:
        """Give unfinished problems back to the pool at once (Ctrl-C, budget): no grace period to wait."""
        if not problem_ids:
            return
        with self.session(f"release the claims of {claimant}") as session:
            session.execute(
                sa.update(ProblemModel)
                .where(
                    ProblemModel.id.in_(list(problem_ids)),
                    ProblemModel.claimed_by == claimant,
                    ProblemModel.done_at.is_(None),
                )
                .values(claimed_by=None, heartbeat_at=None)
            )

    def finish_problem(self, claimant: str, problem_id: int) -> bool:
        """Mark a claimed problem done; False when `claimant` no longer holds it."""
        with self.session(f"finish problem {problem_id}") as session:
            now = database_now(session)
            result = session.execute(
                sa.update(ProblemModel)
                .where(
                    ProblemModel.id == problem_id,
                    ProblemModel.claimed_by == claimant,
                    ProblemModel.done_at.is_(None),
                )
                .values(done_at=now, heartbeat_at=now)
            )
            return result.rowcount == 1

    def held_by_others(
        self, sweep_id: int, problem_ids: Collection[int], claimant: str, grace_s: float
    ) -> int:
        """How many of `problem_ids` another live process holds (claimed, not done, heartbeat fresh)."""
        if not problem_ids:
            return 0
        with self.session(f"count the live claims of sweep {sweep_id}") as session:
            stale = database_now(session) - timedelta(seconds=grace_s)
            query = sa.select(sa.func.count()).where(
                ProblemModel.sweep_id == sweep_id,
                ProblemModel.id.in_(list(problem_ids)),
                ProblemModel.claimed_by.is_not(None),
                ProblemModel.claimed_by != claimant,
                ProblemModel.done_at.is_(None),
                ProblemModel.heartbeat_at >= stale,
            )
            return int(session.scalar(query) or 0)

    # Trials -------------------------------------------------------------------------------------
    def record_trial(
        self, problem_id: int, config: Config, measurement: Measurement, worker: str | None = None
    ) -> TrialModel:
        """Commit one finished trial. A second trial of the same (problem, config) is a
        DuplicateTrialError (a StorageError)."""
        fields = {f: getattr(measurement, f) for f in Measurement.__dataclass_fields__}
        fields["status"] = TrialStatus(measurement.status).value
        operation = f"record trial {config.label} of problem {problem_id}"
        try:
            with self.session(operation) as session:
                trial = TrialModel(
                    problem_id=problem_id, config_json=config_to_json(config), worker=worker, **fields
                )
                session.add(trial)
                session.flush()
                return trial
        except StorageError as e:
            if isinstance(e.__cause__, IntegrityError) and self._has_trial(problem_id, config):
                raise DuplicateTrialError(str(e)) from e.__cause__
            raise

    def _has_trial(self, problem_id: int, config: Config) -> bool:
        with self.session(f"look up trial {config.label} of problem {problem_id}") as session:
            query = sa.select(TrialModel.id).where(
                TrialModel.problem_id == problem_id, TrialModel.config_json == config_to_json(config)
            )
            return session.scalar(query) is not None

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

    def winning_configs(self, problem_ids: Collection[int]) -> dict[int, Config]:
        """The winning config of each of `problem_ids` that has a winner."""
        if not problem_ids:
            return {}
        with self.session("read the winners of neighbouring problems") as session:
            query = (
                sa.select(WinnerModel.problem_id, TrialModel.config_json)
                .join(TrialModel, TrialModel.id == WinnerModel.trial_id)
                .where(WinnerModel.problem_id.in_(list(problem_ids)))
            )
            return {problem_id: config_from_json(text) for problem_id, text in session.execute(query)}

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
