"""The tuner's own errors, in a module that imports nothing: the command line turns them into click
errors (`cli.options.domain_errors`) without importing the database or the kernels to know them."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A database operation failed; the message names the URL and the operation."""


class DuplicateTrialError(StorageError):
    """A trial of this (problem, config) is already recorded (by this process or another)."""


class UnknownSweepError(ValueError):
    """A sweep id given on the command line names no sweep (of the target) in the database."""


class ExportRefused(ValueError):
    """The export would write what a table must not hold (interpreter timings without the opt-in,
    entries of two GPUs under one provenance); nothing was written."""


# Errors in what the command line asked for (a usage error, exit 2); the others are failures (exit 1).
USAGE_ERRORS: tuple[type[Exception], ...] = (ExportRefused, UnknownSweepError)
