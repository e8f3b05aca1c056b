"""What a search strategy is: given a problem's feasible candidates, decide what to measure next and when
to stop. The sweep owns measuring, storage and workers; a strategy only chooses.

Contract (ask/tell, so several workers can measure at once):
- `strategy.begin(problem)` starts the search of one problem and returns a `Search`.
- `search.ask(n)` returns up to `n` configs to measure next, each one of `problem.candidates` and none
  already measured (in `problem.measured` or told since). An empty list means the search is over;
  `ask` may also return fewer than `n` while results it needs are outstanding.
- `search.tell(config, time_ms)` reports a measured config: its time, or None when it failed (wrong,
  crashed, timed out). Every config `ask` returned is told exactly once.
- `search.finish()` once the search is over (`ask` returned nothing and every result is told): the
  search writes down whatever it keeps beyond the sweep's own trials (TPE: its Optuna study).
- Configs measured before (`problem.measured`, e.g. by an earlier run of a resumed sweep) are answers
  the strategy uses without asking for them again: a config is never measured twice.

Options are declared as data, `{name: (description, default)}`, as KernelTuner does; an unknown
option is rejected by name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gdn_kernels import Config


@dataclass(frozen=True)
class Problem:
    """One problem as a strategy sees it."""

    name: str  # unique and stable across runs: names the Optuna study of a TPE search
    candidates: tuple[Config, ...]  # the feasible configs, in the search space's order
    measured: Mapping[Config, float | None] = field(default_factory=dict)  # time in ms; None: failed
    storage_url: str | None = None  # database for a strategy's own state; None keeps it in memory
    # Configs worth measuring first: the winners of the same kernel at neighbouring token buckets, which
    # are often the winner here too. A strategy that samples (TPE) asks for them before it explores.
    seeds: tuple[Config, ...] = ()


class Search(abc.ABC):
    """The search of one problem; see the module's contract."""

    @abc.abstractmethod
    def ask(self, n: int = 1) -> list[Config]: ...

    @abc.abstractmethod
    def tell(self, config: Config, time_ms: float | None) -> None: ...

    def finish(self) -> None:  # noqa: B027  (nothing to keep is the common case, not an omission)
        """The search is over; see the module's contract."""


class Strategy(abc.ABC):
    """A named search strategy with options declared as data."""

    name: ClassVar[str]
    options: ClassVar[Mapping[str, tuple[str, Any]]] = {}  # name -> (description, default)

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(self.options) or "none"
            raise ValueError(
                f"strategy {self.name!r} has no option {', '.join(map(repr, unknown))} (options: {known})"
            )
        self.settings: dict[str, Any] = {name: default for name, (_, default) in self.options.items()}
        self.settings.update(options)

    @abc.abstractmethod
    def begin(self, problem: Problem) -> Search: ...

    def close(self, timeout_s: float = 60.0) -> list[str]:
        """Finish, within `timeout_s`, what the strategy does in the background for finished searches;
        returns what failed (each a line), for the caller to report."""
        return []


def run_search(search: Search, measure: Callable[[Config], float | None]) -> dict[Config, float | None]:
    """Drive a search one config at a time with `measure` until it stops; returns what was measured.

    The sweep drives searches from its own loop (several workers at once); this serves tests and
    sequential use.
    """
    measured: dict[Config, float | None] = {}
    while batch := search.ask(1):
        for config in batch:
            measured[config] = measure(config)
            search.tell(config, measured[config])
    search.finish()
    return measured


def best_of(measured: Mapping[Config, float | None]) -> Config | None:
    """The fastest config that did not fail; ties go to the first measured."""
    timed = [(ms, i, c) for i, (c, ms) in enumerate(measured.items()) if ms is not None]
    return min(timed)[2] if timed else None
