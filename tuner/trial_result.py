"""What one trial found: its status and measurement. The GPU workers and the measuring code make these,
and `Storage.record_trial` keeps them; this module imports no database, so a worker process never loads
SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Measurement", "TrialStatus"]


class TrialStatus(StrEnum):
    OK = "ok"  # correct, deterministic, timed
    INFEASIBLE = "infeasible"  # failed to compile for the target or needs more shared memory than it has
    WRONG = "wrong"  # ran, but missed the reference or differed between two runs
    CRASHED = "crashed"  # raised, or took its worker process down (abort, illegal address)
    TIMEOUT = "timeout"  # its worker hung past the trial timeout and was killed


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
