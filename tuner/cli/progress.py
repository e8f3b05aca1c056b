"""The progress shown while commands work: one line on stderr for a sweep, one line per variant for a
warm-up."""

from __future__ import annotations

import sys
from typing import Any

import click


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class SweepProgressLine:
    """One line on stderr, redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_print = -1e9
        self.last_len = 0

    def __call__(self, p: Any) -> None:
        if p.phase == "compile":
            text = f"compile: {p.label}, {p.infeasible} infeasible"
        else:
            left = f", ~{format_seconds(p.eta_s)} left" if p.eta_s is not None else ""
            text = (
                f"[{p.problem}/{p.problems}] {p.done}/{p.planned} trials: {p.ok} ok, {p.failed} failed, "
                f"{p.infeasible} infeasible{left} | {p.label}"
            )
        if self.tty:
            click.echo("\r" + text.ljust(self.last_len)[:200], nl=False, err=True)
            self.last_len = len(text)
        elif p.elapsed_s - self.last_print >= 5 or (p.phase != "compile" and p.done == p.planned):
            click.echo(text, err=True)
            self.last_print = p.elapsed_s

    def close(self) -> None:
        if self.tty and self.last_len:
            click.echo(err=True)


def warmup_progress(done: int, total: int, result: Any) -> None:
    click.echo(f"[{done}/{total}] {result.status:<8} {result.seconds:6.1f} s  {result.label}", err=True)


def seconds_line(seconds: dict[str, float]) -> str:
    """ "load 12.3 s (41 %), check ..." with the share of the total, largest first."""
    total = sum(seconds.values()) or 1.0
    parts = sorted(seconds.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {s:.1f} s ({100 * s / total:.0f} %)" for name, s in parts)


def busy_line(share: dict[str, float]) -> str:
    """ "gpu0 93 %, gpu1 88 %": each worker's time on trials as a share of the measuring wall time."""
    return ", ".join(f"{label} {100 * fraction:.0f} %" for label, fraction in share.items())
