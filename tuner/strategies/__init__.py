"""Search strategies behind one interface (see `base`): exhaustive grid, and Optuna TPE."""

from __future__ import annotations

from typing import Any

from .base import Problem, Search, Strategy, best_of, run_search
from .grid import GridStrategy
from .tpe import TpeStrategy

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (GridStrategy, TpeStrategy)}


def make_strategy(name: str, **options: Any) -> Strategy:
    """The strategy called `name` with `options`; unknown names and options fail with what is known."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known strategies: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](**options)


__all__ = ["STRATEGIES", "Problem", "Search", "Strategy", "best_of", "make_strategy", "run_search"]
