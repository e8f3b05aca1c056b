"""Reading a sweep database back: winners for export and reports, sweep progress, every trial as rows.

Plain rows (dataclasses and dicts), so the CLI only formats them and tests compare them directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gdn_kernels import Config, Key
from gdn_kernels.tuning import replaced_atomically

from .constants import TRIAL_COLUMNS
from .errors import UnknownSweepError
from .storage import (
    ProblemModel,
    Storage,
    SweepModel,
    TrialModel,
    TrialStatus,
    WinnerModel,
    config_from_json,
    database_now,
    key_from_json,
)


@dataclass(frozen=True)
class WinnerRow:
    """The winner of one problem, with the sweep that found it."""

    sweep_id: int
    target: str
    gpu_name: str
    compute_capability: str
    triton_version: str
    torch_version: str
    cuda_version: str | None
    sweep_date: datetime
    interpret: bool
    kernel: str
    kernel_hash: str
    key: Key
    config: Config
    time_ms: float
    default_time_ms: float | None
    default_config: Config

    @property
    def speedup(self) -> float | None:
        """How many times faster than the default config, both re-timed side by side."""
        if self.default_time_ms is None or self.time_ms <= 0:
            return None
        return self.default_time_ms / self.time_ms


def winners(storage: Storage, target: str | None = None) -> list[WinnerRow]:
    """Every winner (of `target`'s sweeps when given), oldest sweep first."""
    query = (
        sa.select(WinnerModel, TrialModel, ProblemModel, SweepModel)
        .join(TrialModel, TrialModel.id == WinnerModel.trial_id)
        .join(ProblemModel, ProblemModel.id == WinnerModel.problem_id)
        .join(SweepModel, SweepModel.id == ProblemModel.sweep_id)
        .order_by(SweepModel.id, ProblemModel.id)
    )
    if target is not None:
        query = query.where(SweepModel.target == target)
    with storage.session("read the winners") as session:
        return [
            WinnerRow(
                sweep_id=sweep.id,
                target=sweep.target,
                gpu_name=sweep.gpu_name,
                compute_capability=sweep.compute_capability,
                triton_version=sweep.triton_version,
                torch_version=sweep.torch_version,
                cuda_version=sweep.cuda_version,
                sweep_date=sweep.finished_at or sweep.started_at,
                interpret=sweep.interpret,
                kernel=problem.kernel,
                kernel_hash=problem.kernel_hash,
                key=key_from_json(problem.key_json),
                config=config_from_json(trial.config_json),
                time_ms=winner.time_ms,
                default_time_ms=winner.default_time_ms,
                default_config=config_from_json(problem.default_config_json),
            )
            for winner, trial, problem, sweep in session.execute(query)
            if trial.status == TrialStatus.OK  # set_winner refuses others; a hand-edited database too
        ]


def sweep_rows(storage: Storage) -> list[dict[str, Any]]:
    """Every sweep with its progress: problems, problems with a winner, trials by status, and the
    processes measuring it now (`claims`: claimant, problems held, seconds since its last heartbeat;
    a claim older than the sweep's grace period belongs to a dead process and will be taken over)."""
    with storage.session("read the sweeps") as session:
        now = database_now(session)
        sweeps = list(session.scalars(sa.select(SweepModel).order_by(SweepModel.id)))
        problems = dict(
            session.execute(
                sa.select(ProblemModel.sweep_id, sa.func.count()).group_by(ProblemModel.sweep_id)
            ).all()
        )
        won = dict(
            session.execute(
                sa.select(ProblemModel.sweep_id, sa.func.count())
                .join(WinnerModel, WinnerModel.problem_id == ProblemModel.id)
                .group_by(ProblemModel.sweep_id)
            ).all()
        )
        by_status: dict[int, dict[str, int]] = {}
        for sweep_id, status, count in session.execute(
            sa.select(ProblemModel.sweep_id, TrialModel.status, sa.func.count())
            .join(TrialModel, TrialModel.problem_id == ProblemModel.id)
            .group_by(ProblemModel.sweep_id, TrialModel.status)
        ):
            by_status.setdefault(sweep_id, {})[status] = count
        done = dict(
            session.execute(
                sa.select(ProblemModel.sweep_id, sa.func.count())
                .where(ProblemModel.done_at.is_not(None))
                .group_by(ProblemModel.sweep_id)
            ).all()
        )
        claims: dict[int, list[dict[str, Any]]] = {}
        for sweep_id, claimant, held, last in session.execute(
            sa.select(
                ProblemModel.sweep_id,
                ProblemModel.claimed_by,
                sa.func.count(),
                sa.func.max(ProblemModel.heartbeat_at),
            )
            .where(ProblemModel.claimed_by.is_not(None), ProblemModel.done_at.is_(None))
            .group_by(ProblemModel.sweep_id, ProblemModel.claimed_by)
            .order_by(ProblemModel.claimed_by)
        ):
            age = round((now - last).total_seconds(), 1) if last is not None else None
            claims.setdefault(sweep_id, []).append(
                {"claimant": claimant, "problems": held, "heartbeat_age_s": age}
            )
    return [
        {
            "id": s.id,
            "target": s.target,
            "gpu_name": s.gpu_name,
            "interpret": s.interpret,
            "strategy": s.strategy,
            "status": s.status,
            "started_at": s.started_at.isoformat(timespec="seconds"),
            "finished_at": s.finished_at.isoformat(timespec="seconds") if s.finished_at else None,
            "problems": problems.get(s.id, 0),
            "problems_with_winner": won.get(s.id, 0),
            "problems_done": done.get(s.id, 0),
            "claims": claims.get(s.id, []),
            "trials": dict(sorted(by_status.get(s.id, {}).items())),
            "command": s.command,
        }
        for s in sweeps
    ]


def trial_rows(storage: Storage, sweep_id: int | None = None) -> list[dict[str, Any]]:
    """Every trial (of one sweep when given), one dict per trial with the TRIAL_COLUMNS."""
    query = (
        sa.select(TrialModel, ProblemModel, SweepModel, WinnerModel.trial_id)
        .join(ProblemModel, ProblemModel.id == TrialModel.problem_id)
        .join(SweepModel, SweepModel.id == ProblemModel.sweep_id)
        .outerjoin(WinnerModel, WinnerModel.problem_id == ProblemModel.id)
        .order_by(SweepModel.id, ProblemModel.id, TrialModel.id)
    )
    if sweep_id is not None:
        query = query.where(SweepModel.id == sweep_id)
    with storage.session("read the trials") as session:
        return [
            {
                "sweep_id": sweep.id,
                "target": sweep.target,
                "gpu_name": sweep.gpu_name,
                "interpret": sweep.interpret,
                "kernel": problem.kernel,
                "kernel_hash": problem.kernel_hash,
                "key": problem.key_json,
                "config": trial.config_json,
                "is_default": trial.config_json == problem.default_config_json,
                "is_winner": winner_trial_id == trial.id,
                "status": trial.status,
                "median_ms": trial.median_ms,
                "min_ms": trial.min_ms,
                "max_ms": trial.max_ms,
                "spread_ms": trial.spread_ms,
                "repetitions": trial.repetitions,
                "retimed_ms": trial.retimed_ms,
                "rel_error": trial.rel_error,
                "compile_seconds": trial.compile_seconds,
                "shared_bytes": trial.shared_bytes,
                "error": trial.error,
                "finished_at": trial.finished_at,
                "worker": trial.worker,
            }
            for trial, problem, sweep, winner_trial_id in session.execute(query)
        ]


def write_trials_parquet(storage: Storage, path: str | Path, sweep_id: int | None = None) -> int:
    """Every trial as a Parquet file with the TRIAL_COLUMNS; returns the number of rows. FileWriteError
    names `path` when it cannot be written; UnknownSweepError, before anything is written, when
    `sweep_id` names no sweep."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if sweep_id is not None:
        with storage.session("read the sweeps") as session:
            known = list(session.scalars(sa.select(SweepModel.id).order_by(SweepModel.id)))
        if sweep_id not in known:
            raise UnknownSweepError(
                f"--sweep {sweep_id}: no such sweep in {storage.display_url} "
                f"(sweeps: {', '.join(map(str, known)) or 'none'})"
            )
    rows = trial_rows(storage, sweep_id)
    schema = pa.schema(
        [
            ("sweep_id", pa.int64()),
            ("target", pa.string()),
            ("gpu_name", pa.string()),
            ("interpret", pa.bool_()),
            ("kernel", pa.string()),
            ("kernel_hash", pa.string()),
            ("key", pa.string()),
            ("config", pa.string()),
            ("is_default", pa.bool_()),
            ("is_winner", pa.bool_()),
            ("status", pa.string()),
            ("median_ms", pa.float64()),
            ("min_ms", pa.float64()),
            ("max_ms", pa.float64()),
            ("spread_ms", pa.float64()),
            ("repetitions", pa.int64()),
            ("retimed_ms", pa.float64()),
            ("rel_error", pa.float64()),
            ("compile_seconds", pa.float64()),
            ("shared_bytes", pa.int64()),
            ("error", pa.string()),
            ("finished_at", pa.timestamp("us", tz="UTC")),
            ("worker", pa.string()),
        ]
    )
    assert schema.names == list(TRIAL_COLUMNS), "TRIAL_COLUMNS and the Parquet schema must agree"
    table = pa.Table.from_pylist(rows, schema=schema)
    with replaced_atomically(Path(path)) as temp:  # a failed write leaves no half-written file
        pq.write_table(table, str(temp))
    return len(rows)


def config_text(config: Config) -> str:
    return json.dumps(dict(config.params), separators=(",", ":"))
