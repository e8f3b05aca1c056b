"""Exhaustive grid: every feasible candidate once, in the search space's order. For small spaces."""

from __future__ import annotations

from gdn_kernels import Config

from .base import Problem, Search, Strategy


class GridSearch(Search):
    def __init__(self, problem: Problem) -> None:
        done = set(problem.measured)
        self._pending = [c for c in problem.candidates if c not in done]

    def ask(self, n: int = 1) -> list[Config]:
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    def tell(self, config: Config, time_ms: float | None) -> None:
        pass  # the grid's order does not depend on results


class GridStrategy(Strategy):
    name = "grid"  # no options: every candidate, once

    def begin(self, problem: Problem) -> Search:
        return GridSearch(problem)
